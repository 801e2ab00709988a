//! What `sts` takes for a token's bindings: `--allow-source`,
//! `--audience` and `--allow-route` (`BindingOptions`), and a route's text
//! as the API's route (`parse_route`).

use super::CliError;
use crate::proto::AllowedRoute;

/// What `--allow-source`, `--audience` and `--allow-route` give.
#[derive(Debug, Clone, Default)]
pub struct BindingOptions {
    pub sources: Vec<String>,
    pub audiences: Vec<String>,
    /// `GET,HEAD /api/*`, or a path alone for any method.
    pub routes: Vec<String>,
}

/// `--allow-route`'s text as the API's route: methods (comma-separated)
/// and a path pattern, or the pattern alone.
pub fn parse_route(text: &str) -> Result<AllowedRoute, CliError> {
    let text = text.trim();
    let (methods, path) = match text.split_once(char::is_whitespace) {
        _ if text.starts_with('/') => (Vec::new(), text),
        Some((methods, path)) => (
            methods
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
            path.trim(),
        ),
        None => (Vec::new(), ""),
    };
    if !path.starts_with('/') {
        return Err(CliError::Usage(format!(
            "invalid --allow-route '{text}': use 'METHODS /path' (e.g. 'GET,HEAD /api/v1/*') or '/path' for any method"
        )));
    }
    Ok(AllowedRoute {
        methods,
        path: path.to_owned(),
    })
}
