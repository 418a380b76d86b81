//! What the `kiln` commands print when they fail: each cause once, with what to do next.

mod util;

use std::net::TcpListener;

/// A loopback port nothing listens on: bound, then closed.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_refused_connection_names_its_cause_once_and_what_to_check() {
    let controller = format!("127.0.0.1:{}", closed_port());
    let key = "kiln-key-v2.plaintext.0123456789abcdef0123456789abcdef";
    let runs = [
        vec!["status", "1", "--controller", &controller, "--api-key", key],
        vec!["jobs", "--controller", &controller, "--api-key", key],
    ];
    for args in runs {
        let output = util::kiln().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("cannot connect to the controller at {controller}")), "{args:?}: {stderr}");
        assert_eq!(stderr.matches("Connection refused").count(), 1, "the cause said once: {stderr}");
        assert!(stderr.contains("check that it runs and the address is right"), "{stderr}");
    }
}
