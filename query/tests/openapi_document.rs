//! docs/openapi.json, the API reference the docs point to, is the document
//! fleetpipe serves at `GET /v1/openapi.json` (generated from the code by
//! utoipa). This fails when the two differ; to rewrite the file:
//! `OPENAPI_WRITE=1 cargo test -p fleetpipe-query --test openapi_document`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn docs_openapi_json_is_the_document_fleetpipe_serves() {
    let served = fleetpipe_query::openapi().to_pretty_json().unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    if std::env::var_os("OPENAPI_WRITE").is_some() {
        std::fs::write(path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json is not the served document; rewrite it: \
         OPENAPI_WRITE=1 cargo test -p fleetpipe-query --test openapi_document"
    );
}
