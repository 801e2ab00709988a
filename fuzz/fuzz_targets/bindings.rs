//! Fuzz target: bytes as a route pattern, methods, a request target and a
//! list of sources, through every parser of a token's bindings and the
//! check that meets them. Never panics, and a request path that parses
//! never holds a segment that could be read two ways.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sts::model::{AllowedSources, Audiences, Bindings, CheckContext, RequestPath, RouteRule};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Fields apart on newlines: pattern, methods, target, sources, audience.
    let mut fields = text.split('\n');
    let pattern = fields.next().unwrap_or_default();
    let methods: Vec<&str> = fields
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|m| !m.is_empty())
        .collect();
    let target = fields.next().unwrap_or_default();
    let sources: Vec<&str> = fields
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .collect();
    let audience = fields.next().unwrap_or_default();
    if let Some(path) = RequestPath::parse(target) {
        let segments = path.segments();
        assert!(
            segments
                .iter()
                .all(|s| s != "." && s != ".." && !s.contains('/')),
            "{target:?} parsed to {segments:?}"
        );
    }
    let rule = RouteRule::parse("allowed_routes", &methods, pattern);
    let sources = AllowedSources::parse("allowed_sources", &sources);
    let audiences = Audiences::parse("audiences", &[audience]);
    if let (Ok(rule), Ok(sources), Ok(audiences)) = (rule, sources, audiences) {
        let routes = sts::model::AllowedRoutes::new("allowed_routes", vec![rule]).unwrap();
        let bindings = Bindings {
            sources,
            audiences,
            routes,
        };
        for method in methods.iter().copied().chain(["GET"]) {
            let context = CheckContext {
                source: "10.0.0.1".parse().ok(),
                audience: Some(audience),
                route: Some((method, target)),
            };
            let _ = bindings.admits(&context);
        }
    }
    let _ = CheckContext::stated(pattern, audience, "GET", target);
});
