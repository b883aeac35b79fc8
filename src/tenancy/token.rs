//! Tokens: generated at random, stored only as SHA-256 hashes, checked in
//! constant time.
//!
//! Tokens are 256 random bits, so a plain (unsalted, fast) hash is enough:
//! there is no dictionary to attack, and the hash only keeps a leaked config
//! file or data directory from handing out working credentials.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every stored hash, naming the algorithm.
const SCHEME: &str = "sha256:";
/// Prefix of every generated token, so one is recognisable in a leak scan.
const TOKEN_PREFIX: &str = "rq_";

/// The SHA-256 of a token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl TokenHash {
    /// Hashes a token.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the stored form, `sha256:` and 64 hex digits.
    pub fn parse(text: &str) -> Result<TokenHash, String> {
        let hex = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("a token hash starts with {SCHEME:?}"))?;
        if hex.len() != 64 {
            return Err(format!(
                "a token hash has 64 hex digits after {SCHEME:?}, not {}",
                hex.len()
            ));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
            *byte = u8::from_str_radix(digits, 16)
                .map_err(|_| format!("{digits:?} is not a hex byte"))?;
        }
        Ok(TokenHash(out))
    }

    /// The stored form.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(SCHEME.len() + 64);
        s.push_str(SCHEME);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Whether `token` hashes to this, compared in constant time.
    pub fn matches(&self, token: &str) -> bool {
        let candidate = TokenHash::of(token);
        self.0.ct_eq(&candidate.0).into()
    }
}

/// A new random token: `rq_` and 64 hex digits (256 bits).
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness available: {e}"))?;
    let mut s = String::with_capacity(TOKEN_PREFIX.len() + 64);
    s.push_str(TOKEN_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_matches_only_its_token() {
        let token = generate().unwrap();
        assert!(token.starts_with("rq_") && token.len() == 67);
        let hash = TokenHash::of(&token);
        let parsed = TokenHash::parse(&hash.to_text()).unwrap();
        assert_eq!(parsed, hash);
        assert!(parsed.matches(&token));
        assert!(!parsed.matches(""));
        assert!(!parsed.matches(&generate().unwrap()));
        // Known vector: SHA-256("abc").
        assert_eq!(
            TokenHash::of("abc").to_text(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_hashes_are_errors() {
        for bad in ["", "md5:00", "sha256:zz", "sha256:", &"sha256:".repeat(3)] {
            assert!(TokenHash::parse(bad).is_err(), "{bad:?}");
        }
        let odd = format!("sha256:{}", "é".repeat(32));
        assert!(TokenHash::parse(&odd).is_err());
    }
}
