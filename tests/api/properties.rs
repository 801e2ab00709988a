//! Property tests of everything that parses untrusted input: the token
//! parser, the credential headers, and every request field validator. For
//! any input: no panic, only the documented errors, and what is accepted
//! keeps the type's invariants. Errors never echo a secret.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use sts::{
    credential::{self, AuthError, MAX_CREDENTIAL_BYTES},
    model::{
        AllowedRoutes, AllowedSources, Description, Labels, ListOrder, MAX_DESCRIPTION_CHARS,
        MAX_LABEL_VALUE_CHARS, MAX_LABELS, MAX_NAME_CHARS, MAX_ROLE_CHARS, MAX_ROLES, OrderKey,
        Position, RecentSources, RequestPath, Role, Roles, RouteRule, SortValue, TokenId,
        TokenName, parse_time,
    },
    page::{PageRequest, encode_cursor},
    token::{MalformedToken, PREFIX, Secret, TOKEN_LEN, TokenHash},
};

/// Strings near the token shape as well as anything at all.
fn token_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "svctok-[A-Za-z0-9]{0,60}",
        "svctok-[A-Za-z0-9]{49}",
        "[ -~]{0,80}",
        Just(Secret::generate().expose_secret().to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_token_parser_takes_any_string(input in token_like()) {
        let parsed = Secret::parse(&input);
        // The hot path's check-and-hash agrees with the parser exactly.
        prop_assert_eq!(parsed.is_ok(), TokenHash::of_presented(&input).is_ok());
        match parsed {
            Ok(token) => {
                prop_assert_eq!(token.expose_secret(), input.as_str());
                prop_assert_eq!(input.len(), TOKEN_LEN);
                prop_assert!(input.starts_with(PREFIX));
                prop_assert_eq!(token.hash(), TokenHash::of_presented(&input).unwrap());
                prop_assert_eq!(format!("{token:?}"), "Secret(<redacted>)");
            }
            // Never an echo of the input: a fixed text, or the length.
            Err(MalformedToken::Length(n)) => prop_assert_eq!(n, input.chars().count()),
            Err(why) => {
                let fixed = MalformedToken::FIXED.map(|e| e.to_string());
                prop_assert!(fixed.contains(&why.to_string()), "{}", why);
            }
        }
    }

    #[test]
    fn any_one_character_change_to_a_token_is_caught(
        position in PREFIX.len()..TOKEN_LEN,
        replacement in proptest::char::range('0', 'z'),
    ) {
        let token = Secret::generate();
        let original = token.expose_secret();
        let mut changed: Vec<char> = original.chars().collect();
        prop_assume!(changed[position] != replacement);
        changed[position] = replacement;
        let changed: String = changed.into_iter().collect();
        let error = Secret::parse(&changed).unwrap_err();
        prop_assert!(
            matches!(error, MalformedToken::Checksum | MalformedToken::Alphabet),
            "{error:?}"
        );
    }

    #[test]
    fn the_credential_headers_take_any_values(
        headers in proptest::collection::vec(
            (
                prop_oneof![
                    Just("authorization"),
                    Just("x-api-key"),
                    Just("x-other"),
                ],
                proptest::collection::vec(any::<u8>(), 0..1100),
            ),
            0..4,
        ),
        words in prop_oneof![
            Just(None),
            token_like().prop_map(|t| Some(format!("ApiKey {t}"))),
            token_like().prop_map(|t| Some(format!("Bearer {t}"))),
        ],
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        if let Some(value) = words.as_deref().and_then(|w| HeaderValue::from_str(w).ok()) {
            map.append("authorization", value);
        }
        match credential::presented(&map) {
            Ok(token) => {
                prop_assert!(!token.is_empty());
                prop_assert!(token.len() <= MAX_CREDENTIAL_BYTES);
                let from_a_header = ["authorization", "x-api-key"].iter().any(|name| {
                    map.get_all(*name)
                        .iter()
                        .any(|v| v.to_str().is_ok_and(|v| v.contains(token)))
                });
                prop_assert!(from_a_header);
            }
            Err(why) => {
                let message = why.to_string();
                for value in map.values() {
                    if let Ok(value) = value.to_str()
                        && value.len() > 8
                    {
                        prop_assert!(!message.contains(value), "{message}");
                    }
                }
                prop_assert!(!matches!(why, AuthError::NotFound | AuthError::Expired));
            }
        }
    }

    #[test]
    fn names_are_checked_whatever_they_hold(input in any::<String>()) {
        if let Ok(name) = TokenName::parse(&input) {
            let name = name.as_str();
            prop_assert_eq!(name, input.trim());
            prop_assert!(!name.is_empty());
            prop_assert!(name.chars().count() <= MAX_NAME_CHARS);
            prop_assert!(!name.chars().any(char::is_control));
        }
    }

    #[test]
    fn roles_are_checked_whatever_they_hold(
        input in proptest::collection::vec(
            prop_oneof![any::<String>(), "[a-z:._-]{1,10}", "[a-z]{60,70}"],
            0..40,
        ),
    ) {
        let parsed = Roles::parse(&input);
        for role in &input {
            if let Ok(role) = Role::parse(role) {
                let role = role.as_str();
                prop_assert!(!role.is_empty() && role.len() <= MAX_ROLE_CHARS);
                prop_assert!(role.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c)));
            }
        }
        match parsed {
            Ok(roles) => {
                let roles: Vec<&str> = roles.iter().map(Role::as_str).collect();
                prop_assert!(!roles.is_empty() && roles.len() <= MAX_ROLES);
                let mut unique = roles.clone();
                unique.sort_unstable();
                unique.dedup();
                prop_assert_eq!(unique.len(), roles.len(), "no duplicates");
                prop_assert!(input.iter().all(|r| Role::parse(r).is_ok()));
            }
            Err(_) => prop_assert!(
                input.is_empty() || input.iter().any(|r| Role::parse(r).is_err())
                    || input.len() > MAX_ROLES
            ),
        }
    }

    #[test]
    fn times_are_checked_for_any_seconds_and_nanos(seconds in any::<i64>(), nanos in any::<i32>()) {
        let in_range = (0..1_000_000_000).contains(&nanos)
            && (-62_135_596_800..=253_402_300_799).contains(&seconds);
        prop_assert_eq!(parse_time("expiration", seconds, nanos).is_ok(), in_range);
    }

    #[test]
    fn page_requests_take_any_size_and_token(
        size in any::<i32>(),
        token in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,20}"],
        id in 1..=sts::model::MAX_ID,
        name in "\\PC{0,40}",
        order in prop_oneof![Just(""), Just("name"), Just("expiration desc"), Just("last_used"), Just("created desc")],
    ) {
        let order = ListOrder::parse(order).unwrap();
        if let Ok(page) = PageRequest::parse(size, &token, order, 100, 1000) {
            prop_assert!((1..=1000).contains(&page.size));
            prop_assert!(size >= 0);
        }
        let id = TokenId::parse(id).unwrap();
        let value = match order.key {
            OrderKey::Id => SortValue::Micros(0),
            OrderKey::Name => SortValue::Text(name),
            _ => SortValue::Micros(size.into()),
        };
        let at = Position { value, id };
        let page = PageRequest::parse(size.max(0), &encode_cursor(order, &at), order, 100, 1000).unwrap();
        prop_assert_eq!(page.after, Some(at));
    }

    #[test]
    fn descriptions_are_displayable_and_bounded(input in any::<String>()) {
        match Description::parse(&input) {
            Ok(description) => {
                prop_assert_eq!(description.as_str(), input.as_str());
                prop_assert!(input.chars().count() <= MAX_DESCRIPTION_CHARS);
                prop_assert!(!input.chars().any(|c| c.is_control() || sts::text::is_format(c)));
            }
            Err(e) => prop_assert_eq!(e.field, "description"),
        }
    }

    #[test]
    fn a_new_name_holds_nothing_that_misleads_a_reader(input in any::<String>()) {
        if let Ok(name) = sts::model::TokenName::parse(&input) {
            let text = name.as_str();
            let misleading =
                |c: char| c.is_control() || sts::text::is_format(c) || sts::text::is_misleading(c);
            prop_assert!(!text.chars().any(misleading));
            prop_assert!(sts::text::longest_mark_run(text) <= sts::text::MAX_COMBINING_MARKS);
        }
    }

    #[test]
    fn labels_keep_kubernetes_keys_and_displayable_values(
        labels in proptest::collection::vec(
            (
                prop_oneof![any::<String>(), "[a-z0-9.-]{0,12}/[A-Za-z0-9._-]{0,65}", "[A-Za-z0-9._-]{0,65}"],
                prop_oneof![any::<String>(), "[ -~]{0,300}"],
            ),
            0..40,
        )
    ) {
        match Labels::parse(labels.clone()) {
            Ok(parsed) => {
                prop_assert!(parsed.iter().count() <= MAX_LABELS);
                for (key, value) in parsed.iter() {
                    let name = key.rsplit('/').next().unwrap();
                    prop_assert!(!name.is_empty() && name.len() <= 63);
                    prop_assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)));
                    prop_assert!(value.chars().count() <= MAX_LABEL_VALUE_CHARS);
                    prop_assert!(!value.chars().any(|c| c.is_control() || sts::text::is_format(c)));
                }
                // Read back, they parse to themselves.
                let again = Labels::parse(parsed.iter()).unwrap();
                prop_assert_eq!(again, parsed);
            }
            Err(e) => prop_assert!(e.field.starts_with("labels"), "{}", e),
        }
    }

    #[test]
    fn route_patterns_and_paths_take_any_text(
        methods in proptest::collection::vec(prop_oneof![any::<String>(), "[A-Za-z]{1,8}"], 0..4),
        pattern in prop_oneof![any::<String>(), "(/(\\*|\\*\\*|[a-z.%0-9]{0,4})){0,5}"],
        method in prop_oneof![any::<String>(), "(GET|get|POST|HEAD)"],
        path in prop_oneof![any::<String>(), "(/([a-z.]{0,3}|%2[eEfF]|%[0-9A-F]{2})){0,6}(\\?[a-z=]{0,5})?"],
    ) {
        // Whatever the rule and the path: no panic, and a path that could
        // be read two ways is never admitted.
        if let Ok(rule) = RouteRule::parse("allowed_routes", &methods, &pattern) {
            let routes = AllowedRoutes::new("allowed_routes", vec![rule]).unwrap();
            let admitted = routes.admits(&method, &path);
            if RequestPath::parse(&path).is_none() {
                prop_assert!(!admitted);
            }
        }
    }

    #[test]
    fn a_path_admitted_decoded_is_admitted_encoded(
        segments in proptest::collection::vec("[a-z0-9]{1,6}", 0..5),
        encode in any::<u64>(),
    ) {
        // Percent-encoding characters of a segment changes nothing: paths
        // are compared decoded, once.
        let plain = format!("/{}", segments.join("/"));
        let encoded = format!("/{}", segments
            .iter()
            .enumerate()
            .map(|(at, segment)| if encode >> (at % 64) & 1 == 1 {
                segment.bytes().map(|b| format!("%{b:02X}")).collect::<String>()
            } else {
                segment.clone()
            })
            .collect::<Vec<_>>()
            .join("/"));
        let routes = AllowedRoutes::new(
            "allowed_routes",
            vec![RouteRule::parse("allowed_routes", &["GET"], &plain).unwrap()],
        )
        .unwrap();
        prop_assert!(routes.admits("GET", &plain));
        prop_assert!(routes.admits("get", &encoded), "{}", encoded);
        // And any `..` segment, plain or encoded, spoils it.
        let climbing = format!("{plain}/../x");
        prop_assert!(!routes.admits("GET", &climbing));
    }

    #[test]
    fn a_source_binding_admits_exactly_its_networks(
        a in any::<u32>(),
        b in any::<u32>(),
        prefix in 0u8..=32,
    ) {
        let network = std::net::Ipv4Addr::from(a);
        let allowed = AllowedSources::parse("allowed_sources", &[format!("{network}/{prefix}")]).unwrap();
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        let inside = (a & mask) == (b & mask);
        let client = std::net::Ipv4Addr::from(b);
        prop_assert_eq!(allowed.allows(client.into()), inside);
        // The same client, IPv4-mapped, is the same client.
        prop_assert_eq!(allowed.allows(client.to_ipv6_mapped().into()), inside);
    }

    #[test]
    fn recent_sources_converge_whatever_the_order_replicas_merge_in(
        uses in proptest::collection::vec((0u8..12, 0u64..40, 0usize..3), 0..40),
        order in any::<u64>(),
    ) {
        // Each use lands on one of three replicas; they merge in some order.
        let ip = |n: u8| std::net::IpAddr::from([10, 0, 0, n]);
        let time = |s: u64| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let mut replicas = vec![RecentSources::default(); 3];
        for (address, at, replica) in &uses {
            replicas[*replica].see(ip(*address), time(*at));
        }
        let all = RecentSources::of(uses.iter().map(|(a, t, _)| (ip(*a), time(*t))));
        let mut merged = RecentSources::default();
        let mut indices = vec![0, 1, 2];
        indices.rotate_left((order % 3) as usize);
        if order & 4 != 0 {
            indices.swap(0, 1);
        }
        for i in indices {
            merged.merge(&replicas[i]);
            // Merging again changes nothing.
            let again = merged.clone();
            merged.merge(&replicas[i]);
            prop_assert_eq!(&merged, &again);
        }
        prop_assert_eq!(merged, all);
    }
}
