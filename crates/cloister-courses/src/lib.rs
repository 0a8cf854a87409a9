//! Courses and enrollment: orgs (companies buying seats for their staff) with admins and members; courses with a
//! price, a teacher and TAs, public or org-only; live sessions with a schedule and capacity; enrollment by a free
//! click, an org seat code, a teacher's invitation, or (later) a payment; and the public catalog.
//!
//! A domain crate: no tokio, no SQL. Storage is the [`CourseStore`] trait ([`MemoryStore`] here, SQL in
//! `cloister-store`); time is a parameter. Authorization is not decided here: the server asks Cedar
//! (`cloister-policy`) with the facts [`OrgRecord::facts`] and [`CourseRecord::facts`] give, then calls [`Courses`].
//! Nothing here holds content: titles and descriptions are catalog text a teacher publishes on purpose, and the one
//! personal name kept is a teacher's chosen public display name ([`TeacherProfile`]).

#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod conformance;
mod model;
mod service;
mod store;

pub use model::*;
pub use service::{
    Checkout, CourseError, CourseInput, Courses, CoursesConfig, PaymentProvider, PaymentsNotConfigured,
    MAX_DESCRIPTION, MAX_NAME, MAX_QUERY, MAX_TITLE,
};
pub use store::{
    CourseDeletionEvidence, CourseStore, InvitationEvidence, MemoryStore, OrgDeletionEvidence, RedeemError,
    SeatEvidence,
};

#[cfg(test)]
mod tests;
