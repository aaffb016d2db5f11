//! Unit tests of `crate::token`.

use super::*;
use crate::store::RECORD_VERSION;
use std::time::SystemTime;

use crate::secret::Secret;

/// Every type that holds a token prints `[redacted]` in its place.
#[test]
fn debug_and_display_never_show_a_token() {
    const AT: &str = "at-SECRET-1234";
    const RT: &str = "rt-SECRET-5678";
    let inject_header = crate::config::Inject::parse("Authorization: Bearer {token}").unwrap();
    let inject_query = crate::config::Inject::parse("?access_token={token}").unwrap();
    let record = StoredToken {
        version: RECORD_VERSION,
        generation: 1,
        access_token: Some(Secret::new(AT)),
        refresh_token: Some(Secret::new(RT)),
        issued_at_ms: 0,
        expires_at_ms: u64::MAX,
        extra: Default::default(),
    };
    let state = TokenState {
        record: Some(record.clone()),
        credentials: vec![
            inject_header.credential(AT).unwrap(),
            inject_query.credential(AT).unwrap(),
        ],
        failure: Some(Failure {
            terminal: false,
            message: "x".into(),
            attempts: 1,
            retry_at: Instant::now(),
            at: Instant::now(),
            cause: Source::Store,
        }),
        ..TokenState::default()
    };
    let response = parse_response(
        http::StatusCode::OK,
        format!(r#"{{"access_token":"{AT}","refresh_token":"{RT}"}}"#).as_bytes(),
        None,
        SystemTime::now(),
    )
    .unwrap();
    let printed = [
        format!("{state:?}"),
        format!("{record:?}"),
        format!("{response:?}"),
        format!("{:?} {}", Secret::new(AT), Secret::new(AT)),
        format!("{:?}", state.credentials),
    ];
    for text in printed {
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
}

#[test]
fn any_stored_time_formats_and_converts() {
    for ms in [0, 1, u64::MAX / 2, u64::MAX] {
        let _ = system_to_instant(ms_to_time(ms));
    }
}
