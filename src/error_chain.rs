//! An error and its causes on one line. The top-level messages of hyper and reqwest are terse
//! ("error sending request for url (…)"); the reason a user can act on (a refused connection, an
//! unknown certificate issuer) is in their sources.

/// `e` and each of its causes, joined with `": "`; a cause whose text is already in the line
/// (an error that prints its source itself) is left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("IO error: {0}")]
    struct Prints(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_message_once() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            error_chain(&Outer(refused())),
            "error sending request: refused"
        );
        assert_eq!(error_chain(&Prints(refused())), "IO error: refused");
    }
}
