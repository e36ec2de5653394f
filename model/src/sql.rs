//! SQL text shared by the stages that talk to PostgreSQL (the TimescaleDB
//! sink and enrichment's state checkpoints), so that both name the same
//! objects the same way.
//!
//! - [`quote_ident`]: always available; string formatting only.
//! - [`describe_pg_error`]: with the `postgres` feature, a
//!   `tokio_postgres::Error` as one line an operator can act on.

/// `name` as a quoted SQL identifier: in double quotes, a `"` doubled.
///
/// A quoted identifier keeps its case (`Fleet` stays `Fleet`, where an
/// unquoted one folds to `fleet`), so every statement naming an object must
/// quote it the same way.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A PostgreSQL error as one line an operator can act on.
///
/// `tokio_postgres::Error` displays server errors as just `db error`; this
/// gives the severity, SQLSTATE, message, detail and context, or the chain
/// of causes of a client-side error (connection refused, closed, ...).
#[cfg(feature = "postgres")]
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    use std::fmt::Write as _;

    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            let _ = write!(s, " (detail: {detail})");
        }
        if let Some(context) = db.where_() {
            let _ = write!(s, " (context: {context})");
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(s, ": {cause}");
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_keep_their_case_and_escape_quotes() {
        assert_eq!(quote_ident("Fleet"), "\"Fleet\"");
        assert_eq!(quote_ident("fleet"), "\"fleet\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident(""), "\"\"");
    }
}
