//! Validation of names that come from the wire: namespaces, rooms, events,
//! subscriptions and client ids.

/// Longest name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes; the limit is {MAX_NAME_BYTES}")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} contains a control character")]
    ControlCharacter { kind: &'static str },
    #[error("namespace must start with '/' and not end with one (except \"/\")")]
    NamespaceShape,
}

/// Checks a room, event, subscription or client-id name: 1–255 bytes (UTF-8 is
/// guaranteed by the protobuf `string` type), no control characters.
pub fn check_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            kind,
            len: name.len(),
        });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter { kind });
    }
    Ok(())
}

/// Checks a namespace: a path such as `/`, `/orders` or `/orders/eu`.
pub fn check_namespace(name: &str) -> Result<(), NameError> {
    check_name("namespace", name)?;
    if !name.starts_with('/') || (name.len() > 1 && name.ends_with('/')) {
        return Err(NameError::NamespaceShape);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("room", "general").is_ok());
        assert!(check_name("room", "чат").is_ok());
        assert!(check_name("room", "").is_err());
        assert!(check_name("room", "a\0b").is_err());
        assert!(check_name("room", "a\nb").is_err());
        assert!(check_name("room", &"x".repeat(255)).is_ok());
        assert!(check_name("room", &"x".repeat(256)).is_err());
    }

    #[test]
    fn namespaces() {
        assert!(check_namespace("/").is_ok());
        assert!(check_namespace("/orders").is_ok());
        assert!(check_namespace("orders").is_err());
        assert!(check_namespace("/orders/").is_err());
        assert!(check_namespace("").is_err());
    }
}
