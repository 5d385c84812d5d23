//! The `[auth]` configuration section: password policy, lockout and session settings, and the
//! password checks that enforce it.

use serde::Deserialize;

/// Authentication settings (`[auth]` in central's configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shortest acceptable password, characters.
    pub min_length: usize,
    /// Longest acceptable password, characters (bounds the hashing work an attacker can ask for).
    pub max_length: usize,
    /// How many of the four character classes (lower case, upper case, digit, other) a password needs.
    pub min_classes: usize,
    /// A password expires this many days after it was set; 0 means never.
    pub expiry_days: u32,
    /// A new password may not equal any of this many previous ones; 0 turns the check off.
    pub history: usize,
    /// Failed logins within `failure_window_s` that lock the account.
    pub max_failures: u32,
    /// The window over which failures are counted, seconds.
    pub failure_window_s: u64,
    /// How long a locked account stays locked, seconds.
    pub lockout_s: u64,
    /// Failed logins from one client address within the window that raise a security event even when
    /// they are spread over many user names (password spraying).
    pub client_alert_failures: u32,
    /// Session token lifetime, seconds.
    pub token_ttl_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            min_length: 12,
            max_length: 256,
            min_classes: 3,
            expiry_days: 90,
            history: 5,
            max_failures: 5,
            failure_window_s: 900,
            lockout_s: 900,
            client_alert_failures: 20,
            token_ttl_s: 8 * 3600,
        }
    }
}

/// A password rule a candidate broke; the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    /// Shorter than `min_length`.
    #[error("password policy: at least {min} characters are required (got {got})")]
    TooShort {
        /// The minimum.
        min: usize,
        /// The candidate's length.
        got: usize,
    },
    /// Longer than `max_length`.
    #[error("password policy: at most {max} characters are allowed")]
    TooLong {
        /// The maximum.
        max: usize,
    },
    /// Too few character classes.
    #[error(
        "password policy: at least {need} of the classes lower case, upper case, digit, other are required (got {got})"
    )]
    TooFewClasses {
        /// Classes required.
        need: usize,
        /// Classes present.
        got: usize,
    },
    /// Contains the user name.
    #[error("password policy: the password must not contain the user name")]
    ContainsUserName,
    /// Equal to a recent password.
    #[error("password policy: the password equals one of the last {history} passwords")]
    Reused {
        /// How many previous passwords are checked.
        history: usize,
    },
}

impl AuthConfig {
    /// Checks a candidate password of `user` against the length, class and user-name rules (the
    /// history rule needs the stored hashes and is checked by the identity store).
    pub fn check(&self, user: &str, password: &str) -> Result<(), PolicyViolation> {
        let got = password.chars().count();
        if got < self.min_length {
            return Err(PolicyViolation::TooShort { min: self.min_length, got });
        }
        if got > self.max_length {
            return Err(PolicyViolation::TooLong { max: self.max_length });
        }
        let classes = classes(password);
        if classes < self.min_classes {
            return Err(PolicyViolation::TooFewClasses { need: self.min_classes, got: classes });
        }
        if user.chars().count() >= 3 && password.to_lowercase().contains(&user.to_lowercase()) {
            return Err(PolicyViolation::ContainsUserName);
        }
        Ok(())
    }

    /// Validates the section as a whole; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.min_length < 8 {
            return Err(("auth.min_length", "must be at least 8".into()));
        }
        if self.max_length < self.min_length || self.max_length > 1024 {
            return Err(("auth.max_length", "must be between min_length and 1024".into()));
        }
        if !(1..=4).contains(&self.min_classes) {
            return Err(("auth.min_classes", "must be 1..=4".into()));
        }
        if self.max_failures == 0 {
            return Err(("auth.max_failures", "must be at least 1".into()));
        }
        if self.failure_window_s == 0 || self.lockout_s == 0 {
            return Err(("auth.failure_window_s", "the failure window and lockout_s must be at least 1 s".into()));
        }
        if self.token_ttl_s < 60 {
            return Err(("auth.token_ttl_s", "must be at least 60".into()));
        }
        if self.history > 100 {
            return Err(("auth.history", "must be at most 100".into()));
        }
        Ok(())
    }

    /// A random password that satisfies the policy (24 characters, all four classes).
    pub fn generate(&self) -> Result<String, getrandom::Error> {
        const SETS: [&[u8]; 4] =
            [b"abcdefghijkmnopqrstuvwxyz", b"ABCDEFGHJKLMNPQRSTUVWXYZ", b"23456789", b"-_.:+=!@#%*"];
        let len = self.min_length.max(24).min(self.max_length);
        let mut random = vec![0u8; len * 2];
        getrandom::fill(&mut random)?;
        let mut out: Vec<u8> = random[..len]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // The first four characters cover every class; the rest draw from all of them.
                let set = if i < 4 { SETS[i] } else { SETS[usize::from(*r) % 4] };
                set[usize::from(random[len + i]) % set.len()]
            })
            .collect();
        // Shuffle so the class-covering prefix is not predictable.
        for i in (1..out.len()).rev() {
            let j = usize::from(random[i]) % (i + 1);
            out.swap(i, j);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn classes(password: &str) -> usize {
    let mut seen = [false; 4];
    for c in password.chars() {
        let ix = if c.is_lowercase() {
            0
        } else if c.is_uppercase() {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            3
        };
        seen[ix] = true;
    }
    seen.iter().filter(|s| **s).count()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_rule_is_named() {
        let p = AuthConfig::default();
        assert!(matches!(p.check("alice", "Short1!"), Err(PolicyViolation::TooShort { min: 12, got: 7 })));
        assert!(matches!(p.check("alice", "alllowercaseletters"), Err(PolicyViolation::TooFewClasses { .. })));
        assert_eq!(p.check("alice", "xxAlice-2024xx"), Err(PolicyViolation::ContainsUserName));
        assert!(p.check("alice", &"Aa1!".repeat(100)).is_err());
        assert!(p.check("alice", "Correct-Horse-7").is_ok());
        assert!(p.check("alice", "Correct-Horse-7").is_ok());
        assert!(p.check("alice", "correct horse 7x").is_ok(), "three classes: lower, other, digit");
        let e = p.check("alice", "abc").unwrap_err().to_string();
        assert!(e.contains("at least 12 characters"), "{e}");
    }

    proptest! {
        #[test]
        fn generated_passwords_always_comply(min in 8usize..64, classes in 1usize..=4) {
            let p = AuthConfig { min_length: min, min_classes: classes, ..AuthConfig::default() };
            let pw = p.generate().unwrap();
            prop_assert!(p.check("someone", &pw).is_ok(), "{pw}");
        }
    }
}
