//! Whole-system scenarios live in `tests/*.rs`; this library is empty.
