//! Subjects: validation and wildcard matching, with the rules of NATS core.
//!
//! A subject is a non-empty list of non-empty tokens separated by `.`, with no
//! whitespace. A pattern (what a subscription names) may also use the wildcards `*`
//! (exactly one token) and `>` (one or more tokens; only as the last token). A wildcard
//! must be a whole token: `a.b*` is an ordinary (and unusual) token in NATS, but we refuse
//! it so a typo cannot silently subscribe to nothing. Publishing to a pattern is refused.
//!
//! Sharing the NATS rules means the in-process bus behaves exactly like the NATS one.

/// Why a string is not a valid subject or pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error("subject has an empty token (leading, trailing or doubled `.`)")]
    EmptyToken,
    #[error("subject contains whitespace")]
    Whitespace,
    #[error("wildcards `*` and `>` may only be used to subscribe, not to publish")]
    WildcardInPublish,
    #[error("`*` and `>` must be whole tokens, and `>` must be the last token")]
    MisplacedWildcard,
}

/// Checks a subject to publish to: tokens only, no wildcards.
pub fn validate_subject(subject: &str) -> Result<(), SubjectError> {
    check_tokens(subject, false)
}

/// Checks a subscription pattern: tokens, `*` tokens, and an optional final `>`.
pub fn validate_pattern(pattern: &str) -> Result<(), SubjectError> {
    check_tokens(pattern, true)
}

fn check_tokens(text: &str, wildcards_allowed: bool) -> Result<(), SubjectError> {
    if text.is_empty() {
        return Err(SubjectError::Empty);
    }
    if text.chars().any(char::is_whitespace) {
        return Err(SubjectError::Whitespace);
    }
    let mut tokens = text.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(SubjectError::EmptyToken);
        }
        let is_last = tokens.peek().is_none();
        match token {
            "*" | ">" if !wildcards_allowed => return Err(SubjectError::WildcardInPublish),
            "*" => {}
            ">" if is_last => {}
            ">" => return Err(SubjectError::MisplacedWildcard),
            _ if token.contains(['*', '>']) => {
                return Err(if wildcards_allowed {
                    SubjectError::MisplacedWildcard
                } else {
                    SubjectError::WildcardInPublish
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether the pattern has a wildcard token (and so cannot be looked up exactly).
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|token| token == "*" || token == ">")
}

/// Whether a valid `subject` matches a valid `pattern`. Allocation-free: it walks both
/// token lists once.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for pattern_token in pattern.split('.') {
        match (pattern_token, subject_tokens.next()) {
            // `>` needs at least one token to match, and swallows the rest.
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_subjects() {
        assert_eq!(validate_subject("sb.node.n1"), Ok(()));
        assert_eq!(validate_subject("a"), Ok(()));
        assert_eq!(validate_subject("feed:news.x"), Ok(()));
        assert_eq!(validate_subject(""), Err(SubjectError::Empty));
        assert_eq!(validate_subject("a..b"), Err(SubjectError::EmptyToken));
        assert_eq!(validate_subject(".a"), Err(SubjectError::EmptyToken));
        assert_eq!(validate_subject("a."), Err(SubjectError::EmptyToken));
        assert_eq!(validate_subject("a b"), Err(SubjectError::Whitespace));
        assert_eq!(validate_subject("a.\tb"), Err(SubjectError::Whitespace));
        assert_eq!(validate_subject("a.*"), Err(SubjectError::WildcardInPublish));
        assert_eq!(validate_subject("a.>"), Err(SubjectError::WildcardInPublish));
        assert_eq!(validate_subject("a.b*"), Err(SubjectError::WildcardInPublish));
    }

    #[test]
    fn patterns() {
        for pattern in ["a.*", "*", ">", "a.>", "*.b.>", "a.b"] {
            assert_eq!(validate_pattern(pattern), Ok(()), "{pattern}");
        }
        assert_eq!(validate_pattern("a.>.b"), Err(SubjectError::MisplacedWildcard));
        assert_eq!(validate_pattern("a.b*"), Err(SubjectError::MisplacedWildcard));
        assert_eq!(validate_pattern("a.>>"), Err(SubjectError::MisplacedWildcard));
        assert_eq!(validate_pattern("a..*"), Err(SubjectError::EmptyToken));
        assert!(is_wildcard("a.*.c"));
        assert!(is_wildcard("a.>"));
        assert!(!is_wildcard("a.b"));
    }

    #[test]
    fn matching() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.*", "a", false),
            ("*.b", "a.b", true),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c.d", true),
            ("a.>", "a", false),
            (">", "a", true),
            (">", "a.b", true),
            ("*.*.>", "a.b", false),
            ("*.*.>", "a.b.c", true),
            ("a.*.c", "a.x.c", true),
            ("a.*.c", "a.x.d", false),
        ];
        for (pattern, subject, expected) in cases {
            assert_eq!(matches(pattern, subject), expected, "{pattern} vs {subject}");
        }
    }
}
