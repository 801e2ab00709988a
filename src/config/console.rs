//! Where and whether the web console is served (`--console`,
//! `--console-path-prefix`); its sessions' timeouts are the service's
//! (`ServiceConfig::console_session_idle` and `_lifetime`).

use super::SettingError;

/// The console's default place on the port.
pub const DEFAULT_CONSOLE_PATH_PREFIX: &str = "/console";

/// The console: `None` when it is off (its paths answer 404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    pub prefix: ConsolePrefix,
}

impl Default for ConsoleConfig {
    fn default() -> ConsoleConfig {
        ConsoleConfig {
            prefix: ConsolePrefix(DEFAULT_CONSOLE_PATH_PREFIX.to_owned()),
        }
    }
}

/// The path the console is served under: `/` and segments of unreserved
/// URL characters (so links and the cookie's path need no escaping), no
/// trailing `/`, never an API path of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsolePrefix(String);

impl ConsolePrefix {
    pub fn parse(prefix: &str) -> Result<ConsolePrefix, SettingError> {
        let invalid = |why: &str| {
            Err(SettingError::new(format!(
                "--console-path-prefix {why} (e.g. /console or /admin/tokens)"
            )))
        };
        let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
        let Some(rest) = trimmed.strip_prefix('/') else {
            return invalid("must start with /");
        };
        if rest.is_empty() {
            return invalid("must name a path below /");
        }
        let segment_ok = |segment: &str| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        };
        if !rest.split('/').all(segment_ok) {
            return invalid("must be segments of letters, digits, -, ., _ and ~");
        }
        let first = rest.split('/').next().unwrap_or_default();
        if ["api", "oauth2", "healthz", "readyz", "metrics"].contains(&first)
            || first.contains("grpc")
            || first.starts_with("envoy.")
            || first.starts_with("stackstate.")
        {
            return invalid("must not be under a path the server answers itself");
        }
        Ok(ConsolePrefix(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` is the console's (the prefix itself or below it).
    pub fn holds(&self, path: &str) -> bool {
        path.strip_prefix(self.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_plain_paths_of_their_own() {
        assert_eq!(
            ConsolePrefix::parse("/console/").unwrap().as_str(),
            "/console"
        );
        assert_eq!(
            ConsolePrefix::parse("/admin/tokens").unwrap().as_str(),
            "/admin/tokens"
        );
        for bad in [
            "", "/", "console", "/api", "/api/x", "/a//b", "/a/../b", "/a b", "/é", "/<x>",
            "/healthz",
        ] {
            assert!(ConsolePrefix::parse(bad).is_err(), "{bad}");
        }
        let prefix = ConsolePrefix::parse("/console").unwrap();
        assert!(prefix.holds("/console") && prefix.holds("/console/tokens"));
        assert!(!prefix.holds("/consoles") && !prefix.holds("/api/console"));
    }
}
