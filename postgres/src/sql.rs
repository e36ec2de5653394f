//! SQL text and PostgreSQL errors as the crates that talk to PostgreSQL
//! share them: [`check_identifier`], [`quote_ident`] and [`quote_qualified`]
//! (string handling only, always available), the advisory lock of a schema
//! ([`SCHEMA_LOCK_CLASS`], [`schema_lock_key`]) and, with the `connect`
//! feature, [`describe`].

/// `name` as a quoted SQL identifier: in double quotes, a `"` doubled.
///
/// A quoted identifier keeps its case (`Fleet` stays `Fleet`, where an
/// unquoted one folds to `fleet`), so every statement naming an object must
/// quote it the same way: the sink's tables and enrichment's
/// `vehicle_state` live in one configured schema.
#[must_use]
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`); longer names are
/// silently truncated by the server, which would make two configured schemas
/// collide.
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// Checks a configured schema name: 1-63 characters of `[A-Za-z0-9_]`, not
/// starting with a digit. It is always quoted in SQL ([`quote_ident`]); the
/// restriction keeps it safe inside string literals too
/// (`'schema.table'::regclass`). The error says what is wrong, for the
/// caller to put after the key it names.
///
/// # Errors
///
/// The reason, e.g. `contains '-'; only [A-Za-z0-9_] are allowed`.
pub fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err(format!(
            "is {} characters long, at most {MAX_IDENTIFIER_LEN} are allowed",
            name.len()
        ));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("must not start with a digit".to_owned());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        Some(c) => Err(format!("contains {c:?}; only [A-Za-z0-9_] are allowed")),
        None => Ok(()),
    }
}

/// A possibly schema-qualified name (`name` or `schema.name`, as a
/// configuration names a table) as quoted SQL: each part quoted with
/// [`quote_ident`], so `Fleet.Geofences` is `"Fleet"."Geofences"`. The
/// caller validates the parts first (a `.` inside a part cannot be told
/// from the separator).
#[must_use]
pub fn quote_qualified(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// First key of the advisory lock that serializes schema changes in one
/// schema (`'FPMG'`), so it does not collide with locks of other
/// applications that use the two-key form. The sink's migrations hold it
/// (session lock) while they run, and enrichment takes it (transaction
/// lock) to create `vehicle_state`: the two never create objects in the
/// same schema at the same time, and neither do two instances starting
/// together.
pub const SCHEMA_LOCK_CLASS: i32 = 0x4650_4D47;

/// Second key of a schema's advisory lock: 32-bit FNV-1a of its name
/// (unquoted, as configured), stable across builds and platforms.
#[must_use]
pub fn schema_lock_key(schema: &str) -> i32 {
    let hash = schema.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// A PostgreSQL error as one line an operator can act on.
///
/// `tokio_postgres::Error` displays server errors as just `db error`; this
/// gives the severity, SQLSTATE, message, detail and context, or the chain
/// of causes of a client-side error (connection refused, timeout, TLS
/// handshake refused and why, ...).
#[cfg(feature = "connect")]
#[must_use]
pub fn describe(e: &tokio_postgres::Error) -> String {
    use std::fmt::Write as _;

    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            let _ = write!(s, " (detail: {detail})");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(s, " (hint: {hint})");
        }
        if let Some(context) = db.where_() {
            let _ = write!(s, " (context: {context})");
        }
        return s;
    }
    chain(e)
}

/// An error and its causes, one line (tokio-postgres' `Display` leaves the
/// cause out).
#[cfg(feature = "connect")]
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_name_is_1_to_63_safe_characters_not_starting_with_a_digit() {
        for good in ["fleet", "Fleet_2", "_x", &"a".repeat(MAX_IDENTIFIER_LEN)] {
            assert_eq!(check_identifier(good), Ok(()), "{good}");
        }
        for (bad, reason) in [
            ("", "must not be empty"),
            ("2fleet", "must not start with a digit"),
            ("fleet-1", "contains '-'; only [A-Za-z0-9_] are allowed"),
            ("fleet.x", "contains '.'; only [A-Za-z0-9_] are allowed"),
            ("fl\"eet", "contains '\"'; only [A-Za-z0-9_] are allowed"),
        ] {
            assert_eq!(check_identifier(bad), Err(reason.to_owned()), "{bad}");
        }
        assert_eq!(
            check_identifier(&"a".repeat(64)),
            Err("is 64 characters long, at most 63 are allowed".to_owned())
        );
    }

    #[test]
    fn identifiers_keep_their_case_and_escape_quotes() {
        assert_eq!(quote_ident("Fleet"), "\"Fleet\"");
        assert_eq!(quote_ident("fleet"), "\"fleet\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_qualified("geofences"), "\"geofences\"");
        assert_eq!(
            quote_qualified("Fleet.Geofences"),
            "\"Fleet\".\"Geofences\""
        );
    }

    #[test]
    fn schema_lock_keys_are_stable_and_tell_schemas_apart() {
        // FNV-1a of "public": a change would let an old and a new instance
        // take different locks for the same schema.
        assert_eq!(schema_lock_key("public"), schema_lock_key("public"));
        assert_eq!(schema_lock_key(""), 0x811c_9dc5_u32 as i32);
        assert_ne!(schema_lock_key("Fleet"), schema_lock_key("fleet"));
    }
}
