//! Unit tests of the wire types: state names and secrets.

use super::*;

#[test]
fn each_job_state_has_one_name_that_reads_back() {
    for state in JobState::ALL {
        assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
    }
    assert_eq!("Running".parse::<JobState>(), Err(UnknownJobState("Running".into())));
    assert_eq!(UnknownJobState("done".into()).to_string(), "unknown state `done`");
}

#[test]
fn secrets_compare_by_content_and_never_print() {
    let key = Secret::generate();
    assert_eq!(key.expose().len(), 64);
    assert!(key.matches(&Secret::new(key.expose())));
    assert!(!key.matches(&Secret::generate()));
    assert!(!key.matches(&Secret::new("short")));
    assert!(!format!("{key:?}").contains(key.expose()));
}
