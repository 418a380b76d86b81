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

/// A server on loopback that is not a controller: it accepts connections and either says
/// nothing (`answer` empty) or answers `answer` to whatever it is sent, then hangs up.
fn foreign_server(answer: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if answer.is_empty() {
                held.push(stream);
                continue;
            }
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(answer);
        }
    });
    addr
}

#[test]
fn a_server_that_is_not_a_controller_is_named_as_such_without_library_noise() {
    let silent = foreign_server(b"");
    let http = foreign_server(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let pinned = format!("kiln-key-v2.{}.0123456789abcdef", "ab".repeat(32));
    let plaintext = "kiln-key-v2.plaintext.0123456789abcdef".to_owned();
    let cases = [
        (&silent, &plaintext, "no Kiln controller answered"),
        (&silent, &pinned, "no Kiln controller answered"),
        (&http, &plaintext, "is not a Kiln controller (its answer is not in Kiln's protocol)"),
        (&http, &pinned, "is not a Kiln controller (it does not speak TLS)"),
    ];
    for (addr, key, expected) in cases {
        let output = util::kiln().args(["status", "1", "--controller", addr, "--api-key", key]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{addr} {key}: {stderr}");
        assert!(stderr.contains(expected), "{addr} {key}: {stderr}");
        assert!(stderr.contains("check the address and port"), "{stderr}");
        // One line, Kiln's own: no library log line (tarpc's, rustls') reaches the terminal.
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
}
