-- Courses and enrollment (cloister-courses). Every column is in audits/data-inventory.toml.
CREATE TABLE orgs (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,            -- a company's name, not a person's
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE org_roles (
    org_id  TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    role    TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    PRIMARY KEY (org_id, user_id)
) STRICT;

CREATE TABLE courses (
    id          TEXT    NOT NULL PRIMARY KEY,
    org_id      TEXT    REFERENCES orgs (id) ON DELETE RESTRICT,
    title       TEXT    NOT NULL,
    description TEXT    NOT NULL,
    price_minor INTEGER NOT NULL CHECK (price_minor >= 0),
    currency    TEXT    NOT NULL,
    visibility  TEXT    NOT NULL CHECK (visibility IN ('public', 'org')),
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX courses_catalog ON courses (visibility, created_at);

CREATE TABLE course_staff (
    course_id TEXT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('teacher', 'ta')),
    PRIMARY KEY (course_id, user_id)
) STRICT;

CREATE TABLE enrollments (
    course_id   TEXT    NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    user_id     TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    via         TEXT    NOT NULL CHECK (via IN ('free', 'seat', 'invitation', 'payment')),
    enrolled_at INTEGER NOT NULL,
    PRIMARY KEY (course_id, user_id)
) STRICT;

CREATE TABLE live_sessions (
    id        TEXT    NOT NULL PRIMARY KEY,
    course_id TEXT    NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    starts_at INTEGER NOT NULL,
    ends_at   INTEGER NOT NULL,
    capacity  INTEGER NOT NULL CHECK (capacity > 0)
) STRICT;
CREATE INDEX live_sessions_course ON live_sessions (course_id, starts_at);

CREATE TABLE seat_packs (
    id         TEXT    NOT NULL PRIMARY KEY,
    org_id     TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    course_id  TEXT    NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    seats      INTEGER NOT NULL CHECK (seats > 0),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE seat_codes (
    code_hash   BLOB    NOT NULL PRIMARY KEY,   -- SHA-256 of the code; the code is shown once and never stored
    pack_id     TEXT    NOT NULL REFERENCES seat_packs (id) ON DELETE CASCADE,
    redeemed_by TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    redeemed_at INTEGER
) STRICT;
CREATE INDEX seat_codes_pack ON seat_codes (pack_id);

CREATE TABLE teacher_profiles (
    user_id      TEXT NOT NULL PRIMARY KEY REFERENCES accounts (user_id) ON DELETE CASCADE,
    display_name TEXT NOT NULL                -- chosen by the teacher to be public in the catalog
) STRICT;
