//! The CLI's config file, in StackState's layout:
//!
//! ```yaml
//! contexts:
//! - name: default
//!   context:
//!     url: https://tenant.app.stackstate.io
//!     service-token: svctok-...
//!     ca-cert-path: /etc/ssl/my-ca.pem   # optional
//!     skip-ssl: false                    # optional
//! current-context: default
//! ```
//!
//! It holds secrets, so it is written with mode 0600 in a 0700 directory,
//! atomically (a temporary file renamed over the old one).

use std::{
    fmt, fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::CliError;

/// Where the config lives under the user's config directory.
const CONFIG_RELATIVE: &str = "stackstate-cli/config.yaml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Context {
    pub url: String,
    pub service_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_ssl: bool,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("url", &self.url)
            .field("service_token", &"<redacted>")
            .field("ca_cert_path", &self.ca_cert_path)
            .field("skip_ssl", &self.skip_ssl)
            .finish()
    }
}

/// The config file's path: `$XDG_CONFIG_HOME/stackstate-cli/config.yaml`,
/// else `$HOME/.config/stackstate-cli/config.yaml`.
pub fn default_path(xdg_config_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    let base = xdg_config_home
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")))?;
    Some(base.join(CONFIG_RELATIVE))
}

impl Config {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Config, CliError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => {
                return Err(CliError::Config(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                )));
            }
        };
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        yaml_serde::from_str(&text).map_err(|e| {
            CliError::Config(format!(
                "the config file {} is not valid: {e}",
                path.display()
            ))
        })
    }

    /// Writes the file with mode 0600 (directory 0700), atomically.
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let fail = |e: &dyn fmt::Display| {
            CliError::Config(format!(
                "cannot write the config file {}: {e}",
                path.display()
            ))
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(|e| fail(&e))?;
        let text = yaml_serde::to_string(self).map_err(|e| fail(&e))?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail(&e))?;
        // NamedTempFile is created 0600 on Unix.
        file.write_all(text.as_bytes()).map_err(|e| fail(&e))?;
        file.as_file().sync_all().map_err(|e| fail(&e))?;
        file.persist(path).map_err(|e| fail(&e.error))?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Context> {
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.context)
    }

    /// Adds or replaces `name` and makes it current.
    pub fn upsert(&mut self, name: &str, context: Context) {
        match self.contexts.iter_mut().find(|c| c.name == name) {
            Some(existing) => existing.context = context,
            None => self.contexts.push(NamedContext {
                name: name.to_owned(),
                context,
            }),
        }
        self.current_context = Some(name.to_owned());
    }

    pub fn set_current(&mut self, name: &str) -> Result<(), CliError> {
        if self.get(name).is_none() {
            return Err(CliError::NotFound(format!("context '{name}' not found")));
        }
        self.current_context = Some(name.to_owned());
        Ok(())
    }

    /// Removes `name`; refuses the current context.
    pub fn remove(&mut self, name: &str) -> Result<(), CliError> {
        if self.get(name).is_none() {
            return Err(CliError::NotFound(format!("context '{name}' not found")));
        }
        if self.current_context.as_deref() == Some(name) {
            return Err(CliError::Usage(format!(
                "context '{name}' is the current context; set another one current first"
            )));
        }
        self.contexts.retain(|c| c.name != name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_follows_xdg_then_home() {
        assert_eq!(
            default_path(Some("/x".into()), Some("/h".into())),
            Some(PathBuf::from("/x/stackstate-cli/config.yaml"))
        );
        assert_eq!(
            default_path(Some("relative".into()), Some("/h".into())),
            Some(PathBuf::from("/h/.config/stackstate-cli/config.yaml"))
        );
        assert_eq!(
            default_path(None, Some("/h".into())),
            Some(PathBuf::from("/h/.config/stackstate-cli/config.yaml"))
        );
        assert_eq!(default_path(None, None), None);
    }

    #[test]
    fn stackstate_layout_round_trips() {
        let text = "contexts:\n- name: default\n  context:\n    url: https://x.example\n    service-token: svctok-abc\ncurrent-context: default\n";
        let config: Config = yaml_serde::from_str(text).unwrap();
        assert_eq!(config.current_context.as_deref(), Some("default"));
        assert_eq!(config.get("default").unwrap().service_token, "svctok-abc");
        let back: Config = yaml_serde::from_str(&yaml_serde::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert!(!back.get("default").unwrap().skip_ssl);
    }

    #[test]
    fn tls_settings_are_saved_only_when_set() {
        let mut config = Config::default();
        config.upsert(
            "tls",
            Context {
                url: "https://x".into(),
                service_token: "t".into(),
                ca_cert_path: Some("/ca.pem".into()),
                skip_ssl: true,
            },
        );
        let text = yaml_serde::to_string(&config).unwrap();
        assert!(text.contains("ca-cert-path: /ca.pem"), "{text}");
        assert!(text.contains("skip-ssl: true"), "{text}");
        config.contexts[0].context.ca_cert_path = None;
        config.contexts[0].context.skip_ssl = false;
        let text = yaml_serde::to_string(&config).unwrap();
        assert!(
            !text.contains("ca-cert") && !text.contains("skip-ssl"),
            "{text}"
        );
    }

    #[test]
    fn the_current_context_cannot_be_removed() {
        let mut config = Config::default();
        let context = |url: &str| Context {
            url: url.into(),
            service_token: "t".into(),
            ca_cert_path: None,
            skip_ssl: false,
        };
        config.upsert("a", context("http://a"));
        config.upsert("b", context("http://b"));
        assert_eq!(config.current_context.as_deref(), Some("b"));
        assert!(matches!(config.remove("b"), Err(CliError::Usage(_))));
        assert!(matches!(config.remove("zzz"), Err(CliError::NotFound(_))));
        config.remove("a").unwrap();
        assert_eq!(config.contexts.len(), 1);
        assert!(format!("{:?}", config).contains("<redacted>"));
    }
}
