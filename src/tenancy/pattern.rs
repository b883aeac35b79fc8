//! Room-name patterns for permissions: `*` matches any run of characters
//! (including none); everything else matches itself. `orders.*` matches
//! `orders.eu` and `orders.eu.1`; `*` matches every room.

/// Whether `name` matches `pattern`. Allocates nothing (it runs on every
/// publish and join of a session with permissions).
pub fn matches(pattern: &str, name: &str) -> bool {
    let Some((first, tail)) = pattern.split_once('*') else {
        // No `*`: an exact match.
        return pattern == name;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    for piece in middle.split('*') {
        match rest.find(piece) {
            Some(i) => rest = rest.get(i + piece.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Whether any of `patterns` matches `name`.
pub fn any_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "anything", true),
            ("*", "", true),
            ("orders", "orders", true),
            ("orders", "orders2", false),
            ("orders.*", "orders.eu", true),
            ("orders.*", "orders.", true),
            ("orders.*", "orders", false),
            ("orders.*", "ordersx", false),
            ("*.log", "a.b.log", true),
            ("*.log", "a.logx", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("**", "x", true),
            ("a**b", "ab", true),
            ("*a*", "bab", true),
            ("*a*", "bbb", false),
            ("x*y*z*", "xyz", true),
            ("x*y*z*", "xzy", false),
            ("", "", true),
            ("", "a", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches(p, n), want, "{p:?} vs {n:?}");
        }
    }

    /// The obvious recursive reading of a glob, to hold `matches` to.
    fn reference(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| reference(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && reference(rest, &n[1..]),
        }
    }

    #[test]
    fn agrees_with_the_reference_on_every_short_pattern_and_name() {
        // Every pattern of up to 5 symbols over {a, b, *} and every name of
        // up to 5 letters over {a, b}.
        fn all(alphabet: &[char], max: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                let next: Vec<String> = last
                    .iter()
                    .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                    .collect();
                out.extend(next.iter().cloned());
                last = next;
            }
            out
        }
        let names = all(&['a', 'b'], 5);
        for p in all(&['a', 'b', '*'], 5) {
            for n in &names {
                let want = reference(p.as_bytes(), n.as_bytes());
                assert_eq!(matches(&p, n), want, "{p:?} vs {n:?}");
            }
        }
    }
}
