//! Saying an error with its causes, each once: the one line a command prints when it fails.
//!
//! Many errors name their cause in their own message (`cannot connect to …: Connection
//! refused`) and also return it as their `source`, so printing the chain as is would say the
//! cause twice. [`chain`] leaves out a cause whose words the message already holds.

use std::error::Error;

/// `error` and its sources as one line, `: `-separated, each cause once.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// `": message"` for a one-line message; for one of several lines (a plugin's panic and the
/// line of input it happened on), `":"` and each line on its own, indented: a readable block
/// rather than one long line.
pub fn colon_block(message: &str) -> String {
    let message = message.trim_end();
    if !message.contains('\n') {
        return format!(": {message}");
    }
    let mut block = String::from(":");
    for line in message.lines() {
        block.push_str("\n  ");
        block.push_str(line);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_of_several_lines_becomes_an_indented_block() {
        assert_eq!(colon_block("boom\n"), ": boom");
        assert_eq!(
            colon_block("panicked at a.rs:1:2: boom\non line 7 of x: \"y\""),
            ":\n  panicked at a.rs:1:2: boom\n  on line 7 of x: \"y\""
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to the controller at {addr}: {source}: check that it runs")]
    struct Connect {
        addr: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot submit the job")]
    struct Submit(#[source] Connect);

    #[test]
    fn a_cause_the_message_already_names_is_said_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let refused_text = refused.to_string();
        let error = Submit(Connect { addr: "127.0.0.1:1", source: refused });
        let line = chain(&error);
        assert_eq!(line.matches(&refused_text).count(), 1, "{line}");
        assert!(line.starts_with("cannot submit the job: cannot connect to the controller at 127.0.0.1:1"), "{line}");
    }

    #[test]
    fn a_cause_the_message_does_not_name_is_added() {
        let error = Submit(Connect { addr: "a", source: std::io::Error::other("x") });
        assert_eq!(
            chain(&error),
            "cannot submit the job: cannot connect to the controller at a: x: check that it runs"
        );
        let plain = std::io::Error::other("disk full");
        assert_eq!(chain(&plain), "disk full");
    }
}
