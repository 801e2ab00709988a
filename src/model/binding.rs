//! What a token may be bound to: the sources it may be used from
//! ([`AllowedSources`]), the audiences it is for ([`Audiences`]) and the
//! routes it may call ([`AllowedRoutes`]), each parsed once, when a token is
//! made or read, into the form a check walks without allocating; and the
//! one rule by which a check's context meets them ([`Bindings::admits`]):
//! fail closed, so a bound token is refused where the check cannot see what
//! it is bound to. How routes match is `route`'s.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

use super::fields::FieldError;
use super::route::AllowedRoutes;
#[cfg(test)]
use super::route::{MAX_ALLOWED_ROUTES, RouteRule};
use super::shared::Shared;

/// The most sources one token may be bound to: each check walks them all.
pub const MAX_ALLOWED_SOURCES: usize = 32;
/// The most audiences one token may be for.
pub const MAX_AUDIENCES: usize = 16;
/// The longest audience, in characters.
pub const MAX_AUDIENCE_CHARS: usize = 256;

/// The networks a token may be used from; empty: any source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedSources(Shared<IpNet>);

impl AllowedSources {
    /// Addresses or CIDRs (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`),
    /// each kept as its network (host bits dropped), IPv4-mapped IPv6
    /// read as IPv4; at most [`MAX_ALLOWED_SOURCES`], none twice.
    pub fn parse<S: AsRef<str>>(field: &str, items: &[S]) -> Result<AllowedSources, FieldError> {
        if items.len() > MAX_ALLOWED_SOURCES {
            return Err(FieldError::new(
                field,
                format!("at most {MAX_ALLOWED_SOURCES} sources (use wider CIDRs)"),
            ));
        }
        let mut networks: Vec<IpNet> = Vec::with_capacity(items.len());
        for (at, item) in items.iter().enumerate() {
            let item = item.as_ref().trim();
            let network = network(item).ok_or_else(|| {
                FieldError::new(
                    field,
                    format!(
                        "item {} is not an IP address or a CIDR (such as 10.0.0.0/8 or fd00::/8)",
                        at + 1
                    ),
                )
            })?;
            if networks.contains(&network) {
                return Err(FieldError::new(
                    field,
                    format!("item {} repeats an earlier one", at + 1),
                ));
            }
            networks.push(network);
        }
        Ok(AllowedSources(Shared::of(networks)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_slice().is_empty()
    }

    /// The networks, in the order given.
    pub fn networks(&self) -> &[IpNet] {
        self.0.as_slice()
    }

    pub fn len(&self) -> usize {
        self.0.as_slice().len()
    }

    /// Whether `source` (read as IPv4 when it is IPv4-mapped) lies in one
    /// of the networks.
    pub fn allows(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.0
            .as_slice()
            .iter()
            .any(|network| network.contains(&source))
    }

    /// The networks as text (`10.0.0.0/8`; a single address bare, as it
    /// is usually given), in the order given.
    pub fn texts(&self) -> Vec<String> {
        self.0
            .as_slice()
            .iter()
            .map(|network| {
                if network.prefix_len() == network.max_prefix_len() {
                    network.addr().to_string()
                } else {
                    network.to_string()
                }
            })
            .collect()
    }
}

/// Comma-separated, `any` when empty: the audit log's view.
impl fmt::Display for AllowedSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        list(f, self.texts())
    }
}

fn list(
    f: &mut fmt::Formatter<'_>,
    items: impl IntoIterator<Item = impl fmt::Display>,
) -> fmt::Result {
    let mut any = true;
    for (at, item) in items.into_iter().enumerate() {
        any = false;
        if at > 0 {
            f.write_str(",")?;
        }
        write!(f, "{item}")?;
    }
    if any {
        f.write_str("any")?;
    }
    Ok(())
}

/// `item` as a network: a CIDR with its host bits dropped, or an address
/// as the network of itself. IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) is
/// kept as the IPv4 network it maps, so it matches what clients send.
fn network(item: &str) -> Option<IpNet> {
    let network = match IpNet::from_str(item) {
        Ok(network) => network.trunc(),
        Err(_) => IpNet::from(IpAddr::from_str(item).ok()?),
    };
    Some(match network {
        IpNet::V6(v6) => match (v6.addr().to_ipv4_mapped(), v6.prefix_len()) {
            (Some(v4), prefix) if prefix >= 96 => {
                IpNet::V4(ipnet::Ipv4Net::new(v4, prefix - 96).ok()?.trunc())
            }
            _ => network,
        },
        IpNet::V4(_) => network,
    })
}

/// The audiences a token is for (Kubernetes' bound audiences, an OAuth
/// resource); empty: any audience.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audiences(Shared<String>);

impl Audiences {
    /// Each 1 to [`MAX_AUDIENCE_CHARS`] characters with no control or
    /// invisible formatting character, none twice; at most
    /// [`MAX_AUDIENCES`].
    pub fn parse<S: AsRef<str>>(field: &str, items: &[S]) -> Result<Audiences, FieldError> {
        if items.len() > MAX_AUDIENCES {
            return Err(FieldError::new(
                field,
                format!("at most {MAX_AUDIENCES} audiences"),
            ));
        }
        let mut audiences: Vec<String> = Vec::with_capacity(items.len());
        for (at, item) in items.iter().enumerate() {
            let item = item.as_ref();
            let problem = if item.is_empty() {
                Some("is empty".to_owned())
            } else if item.chars().count() > MAX_AUDIENCE_CHARS {
                Some(format!("is longer than {MAX_AUDIENCE_CHARS} characters"))
            } else if item
                .chars()
                .any(|c| c.is_control() || crate::text::is_format(c))
            {
                Some("holds a control or invisible formatting character".to_owned())
            } else if audiences.iter().any(|a| a == item) {
                Some("repeats an earlier one".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(FieldError::new(field, format!("item {} {problem}", at + 1)));
            }
            audiences.push(item.to_owned());
        }
        Ok(Audiences(Shared::of(audiences)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_slice().is_empty()
    }

    /// Whether `audience` is one of them, exactly.
    pub fn allows(&self, audience: &str) -> bool {
        self.0.as_slice().iter().any(|a| a == audience)
    }

    pub fn as_slice(&self) -> &[String] {
        self.0.as_slice()
    }
}

/// Comma-separated, `any` when empty.
impl fmt::Display for Audiences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        list(f, self.0.as_slice().iter())
    }
}

/// Everything a token is bound to. The default binds nothing: the token
/// works from any source, for any audience, on any route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    pub sources: AllowedSources,
    pub audiences: Audiences,
    pub routes: AllowedRoutes,
}

/// What a check knows of the request it is made for; `None` where it
/// cannot tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckContext<'r> {
    pub source: Option<IpAddr>,
    pub audience: Option<&'r str>,
    /// The method and the request target (its path, maybe a query).
    pub route: Option<(&'r str, &'r str)>,
}

impl<'r> CheckContext<'r> {
    /// The context a caller states for the request it validates (gRPC's
    /// `ValidateRequest`): an empty text is unknown. The source must be a
    /// bare address, and method and path come together or not at all, so a
    /// caller's mistake is an error rather than a refusal later.
    pub fn stated(
        source: &str,
        audience: &'r str,
        method: &'r str,
        path: &'r str,
    ) -> Result<CheckContext<'r>, FieldError> {
        let source = match source {
            "" => None,
            text => Some(IpAddr::from_str(text).map_err(|_| {
                FieldError::new(
                    "source_address",
                    "must be a bare IP address (no port, no CIDR), such as 192.0.2.1 or 2001:db8::1",
                )
            })?),
        };
        let route = match (method, path) {
            ("", "") => None,
            ("", _) | (_, "") => {
                return Err(FieldError::new(
                    "http_method",
                    "and path must be given together",
                ));
            }
            (method, path) => Some((method, path)),
        };
        Ok(CheckContext {
            source,
            audience: (!audience.is_empty()).then_some(audience),
            route,
        })
    }
}

/// Why a bound token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingRefusal {
    /// Not from one of its sources, or the check cannot tell the source.
    SourceNotAllowed,
    /// Not for one of its audiences, or the check names none.
    AudienceNotAllowed,
    /// Not on one of its routes, or the check cannot tell the route.
    RouteNotAllowed,
}

impl BindingRefusal {
    /// A short, fixed label for metrics and aggregated audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            BindingRefusal::SourceNotAllowed => "source_not_allowed",
            BindingRefusal::AudienceNotAllowed => "audience_not_allowed",
            BindingRefusal::RouteNotAllowed => "route_not_allowed",
        }
    }
}

/// What the holder is told: which kind of binding refused it, never what
/// would have been allowed.
impl fmt::Display for BindingRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindingRefusal::SourceNotAllowed => {
                "the service token may not be used from this source (or the check cannot tell the source)"
            }
            BindingRefusal::AudienceNotAllowed => {
                "the service token is not for this audience (or the check names none)"
            }
            BindingRefusal::RouteNotAllowed => {
                "the service token may not call this route (or the check cannot tell the method and path)"
            }
        })
    }
}

impl Bindings {
    /// The first binding of `wider` these bindings widen, as its field
    /// name, if any. Each kind is kept when `wider` binds nothing of it,
    /// or when these bind it to a part of what `wider` allows: every
    /// network within one of `wider`'s, every audience one of `wider`'s,
    /// every route within one of `wider`'s.
    pub fn widening(&self, wider: &Bindings) -> Option<&'static str> {
        let sources = wider.sources.is_empty()
            || (!self.sources.is_empty()
                && self.sources.networks().iter().all(|narrow| {
                    wider
                        .sources
                        .networks()
                        .iter()
                        .any(|wide| wide.contains(narrow))
                }));
        if !sources {
            return Some("allowed_sources");
        }
        let audiences = wider.audiences.is_empty()
            || (!self.audiences.is_empty()
                && self
                    .audiences
                    .as_slice()
                    .iter()
                    .all(|audience| wider.audiences.as_slice().contains(audience)));
        if !audiences {
            return Some("audiences");
        }
        let routes = wider.routes.is_empty()
            || (!self.routes.is_empty()
                && self
                    .routes
                    .rules()
                    .iter()
                    .all(|narrow| wider.routes.rules().iter().any(|wide| narrow.within(wide))));
        if !routes {
            return Some("allowed_routes");
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.audiences.is_empty() && self.routes.is_empty()
    }

    /// Whether a check with `context` may pass, failing closed: a token
    /// bound to sources, audiences or routes is refused where `context`
    /// does not say which. Sources first, then audiences, then routes.
    pub fn admits(&self, context: &CheckContext<'_>) -> Result<(), BindingRefusal> {
        if !self.sources.is_empty()
            && !context
                .source
                .is_some_and(|source| self.sources.allows(source))
        {
            return Err(BindingRefusal::SourceNotAllowed);
        }
        if !self.audiences.is_empty()
            && !context
                .audience
                .is_some_and(|audience| self.audiences.allows(audience))
        {
            return Err(BindingRefusal::AudienceNotAllowed);
        }
        if !self.routes.is_empty()
            && !context
                .route
                .is_some_and(|(method, path)| self.routes.admits(method, path))
        {
            return Err(BindingRefusal::RouteNotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(items: &[&str]) -> AllowedSources {
        AllowedSources::parse("allowed_sources", items).unwrap()
    }

    fn routes(rules: &[(&[&str], &str)]) -> AllowedRoutes {
        let rules = rules
            .iter()
            .map(|(methods, path)| RouteRule::parse("allowed_routes", methods, path).unwrap())
            .collect();
        AllowedRoutes::new("allowed_routes", rules).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sources_match_ipv4_ipv6_and_ipv4_mapped_alike() {
        let allowed = sources(&["10.1.2.3/8", "2001:db8::/32", "192.0.2.7"]);
        assert_eq!(
            allowed.texts(),
            ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
        );
        for yes in [
            "10.200.0.1",
            "::ffff:10.0.0.9",
            "2001:db8:1::5",
            "192.0.2.7",
        ] {
            assert!(allowed.allows(ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.1",
            "192.0.2.8",
            "2001:db9::1",
            "::1",
            "::ffff:192.0.2.8",
        ] {
            assert!(!allowed.allows(ip(no)), "{no}");
        }
        // A mapped network written as IPv6 binds the IPv4 clients it maps.
        let mapped = sources(&["::ffff:10.0.0.0/104"]);
        assert_eq!(mapped.texts(), ["10.0.0.0/8"]);
        assert!(mapped.allows(ip("10.3.3.3")));
    }

    #[test]
    fn bad_sources_are_refused_by_position_without_echoing_them() {
        for (items, problem) in [
            (
                &["10.0.0.0/8", "ten"][..],
                "item 2 is not an IP address or a CIDR",
            ),
            (
                &["10.0.0.0/33"][..],
                "item 1 is not an IP address or a CIDR",
            ),
            (
                &["10.0.0.1/8", "10.9.9.9/8"][..],
                "item 2 repeats an earlier one",
            ),
        ] {
            let error = AllowedSources::parse("allowed_sources", items).unwrap_err();
            assert_eq!(error.field, "allowed_sources");
            assert!(error.problem.starts_with(problem), "{error:?}");
        }
        let many: Vec<String> = (0..=MAX_ALLOWED_SOURCES)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        assert!(AllowedSources::parse("allowed_sources", &many).is_err());
        let most = &many[..MAX_ALLOWED_SOURCES];
        assert!(AllowedSources::parse("allowed_sources", most).is_ok());
    }

    #[test]
    fn audiences_are_exact_bounded_and_visible() {
        let audiences = Audiences::parse("audiences", &["https://api.example", "ci"]).unwrap();
        assert!(audiences.allows("ci"));
        assert!(!audiences.allows("CI") && !audiences.allows("c") && !audiences.allows(""));
        let long = "a".repeat(MAX_AUDIENCE_CHARS + 1);
        for bad in [
            &[""][..],
            &[long.as_str()][..],
            &["a\u{200b}b"][..],
            &["x", "x"][..],
        ] {
            assert!(Audiences::parse("audiences", bad).is_err(), "{bad:?}");
        }
        let most: Vec<String> = (0..MAX_AUDIENCES).map(|i| i.to_string()).collect();
        assert!(Audiences::parse("audiences", &most).is_ok());
        let more: Vec<String> = (0..=MAX_AUDIENCES).map(|i| i.to_string()).collect();
        assert!(Audiences::parse("audiences", &more).is_err());
    }

    #[test]
    fn route_patterns_match_as_pinned() {
        let allowed = routes(&[
            (&["get", "HEAD"], "/api/v1/*"),
            (&[], "/builds/**"),
            (&["POST"], "/hooks/*/run"),
            (&["GET"], "/"),
        ]);
        for (method, path) in [
            ("GET", "/api/v1/items"),
            ("head", "/api/v1/items?page=2"),
            ("DELETE", "/builds"),
            ("PUT", "/builds/42/logs/x"),
            ("GET", "/builds/"),
            ("post", "/hooks/deploy/run"),
            ("GET", "/api/v1/caf%C3%A9"),
            ("GET", "/"),
        ] {
            assert!(allowed.admits(method, path), "{method} {path}");
        }
        for (method, path) in [
            // Another method, a segment too many or too few, case.
            ("POST", "/api/v1/items"),
            ("GET", "/api/v1/items/1"),
            ("GET", "/api/v1"),
            ("GET", "/api/v1/"),
            ("GET", "/API/v1/items"),
            ("GET", "/buildsx"),
            ("POST", "/hooks//run"),
            // Paths that read two ways never match.
            ("GET", "/builds/../admin"),
            ("GET", "/builds/%2e%2e/admin"),
            ("GET", "/builds/./x"),
            ("GET", "/api//v1/items"),
            ("GET", "/api/v1/a%2Fb"),
            ("GET", "/api/v1/%FF"),
            ("GET", "api/v1/items"),
            ("GET", ""),
        ] {
            assert!(!allowed.admits(method, path), "{method} {path}");
        }
    }

    #[test]
    fn bad_route_rules_are_refused() {
        for (methods, pattern) in [
            (&["GET"][..], "api/v1"),
            (&["GET"][..], "/api/**/x"),
            (&["GET"][..], "/api/v*"),
            (&["GET"][..], "/api//x"),
            (&["GET"][..], "/api/../x"),
            (&["GET"][..], "/api?x=1"),
            (&["GE T"][..], "/api"),
            (&[""][..], "/api"),
        ] {
            let refused = RouteRule::parse("allowed_routes", methods, pattern);
            assert!(refused.is_err(), "{methods:?} {pattern}");
        }
        let rule = RouteRule::parse("allowed_routes", &["get", "GET"], "/x/**").unwrap();
        assert_eq!(rule.methods(), ["GET"]);
        assert_eq!(rule.pattern(), "/x/**");
        let rules = (0..=MAX_ALLOWED_ROUTES)
            .map(|_| rule.clone())
            .collect::<Vec<_>>();
        assert!(AllowedRoutes::new("allowed_routes", rules).is_err());
    }

    #[test]
    fn a_bound_token_fails_closed_and_an_unbound_one_passes_anything() {
        let unbound = Bindings::default();
        assert!(unbound.is_empty());
        assert_eq!(unbound.admits(&CheckContext::default()), Ok(()));
        let bound = Bindings {
            sources: sources(&["10.0.0.0/8"]),
            audiences: Audiences::parse("audiences", &["ci"]).unwrap(),
            routes: routes(&[(&["GET"], "/api/**")]),
        };
        let ok = CheckContext {
            source: Some(ip("10.0.0.1")),
            audience: Some("ci"),
            route: Some(("GET", "/api/x")),
        };
        assert_eq!(bound.admits(&ok), Ok(()));
        // Each binding refuses what it cannot see, and what it does not allow;
        // sources first, then audiences, then routes.
        let cases = [
            (
                CheckContext { source: None, ..ok },
                BindingRefusal::SourceNotAllowed,
            ),
            (
                CheckContext {
                    source: Some(ip("11.0.0.1")),
                    ..ok
                },
                BindingRefusal::SourceNotAllowed,
            ),
            (
                CheckContext {
                    audience: None,
                    ..ok
                },
                BindingRefusal::AudienceNotAllowed,
            ),
            (
                CheckContext {
                    audience: Some("cd"),
                    ..ok
                },
                BindingRefusal::AudienceNotAllowed,
            ),
            (
                CheckContext { route: None, ..ok },
                BindingRefusal::RouteNotAllowed,
            ),
            (
                CheckContext {
                    route: Some(("POST", "/api/x")),
                    ..ok
                },
                BindingRefusal::RouteNotAllowed,
            ),
            (CheckContext::default(), BindingRefusal::SourceNotAllowed),
        ];
        for (context, refusal) in cases {
            assert_eq!(bound.admits(&context), Err(refusal), "{context:?}");
        }
    }
}
