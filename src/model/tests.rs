//! The model's unit tests: parsing, changes, counts and records.

use std::time::{Duration, SystemTime};

use super::*;
use crate::text::MAX_COMBINING_MARKS;

#[test]
fn an_etag_moves_with_what_managers_set_and_not_with_use() {
    let (_, stored) = StoredToken::sample();
    let token = stored.token;
    let etag = Etag::of(&token);
    let later = token.created_at + Duration::from_secs(1);
    let changed: Vec<(&str, ServiceToken)> = vec![
        (
            "name",
            ServiceToken {
                name: TokenName::parse("u").unwrap(),
                ..token.clone()
            },
        ),
        (
            "roles",
            ServiceToken {
                roles: Roles::parse(&["r", "s"]).unwrap(),
                ..token.clone()
            },
        ),
        (
            "expiration",
            ServiceToken {
                expiration: Some(later),
                ..token.clone()
            },
        ),
        (
            "created_at",
            ServiceToken {
                created_at: later,
                ..token.clone()
            },
        ),
        (
            "description",
            ServiceToken {
                description: Description::parse("d").unwrap(),
                ..token.clone()
            },
        ),
        (
            "labels",
            ServiceToken {
                labels: Labels::parse([("k", "v")]).unwrap(),
                ..token.clone()
            },
        ),
        (
            "disabled",
            ServiceToken {
                disabled: true,
                ..token.clone()
            },
        ),
        (
            "created_by",
            ServiceToken {
                created_by: "bootstrap".into(),
                ..token.clone()
            },
        ),
        (
            "updated_at",
            ServiceToken {
                updated_at: later,
                ..token.clone()
            },
        ),
        (
            "id",
            ServiceToken {
                id: TokenId::parse(token.id.get() % MAX_ID + 1).unwrap(),
                ..token.clone()
            },
        ),
    ];
    for (field, other) in changed {
        assert_ne!(Etag::of(&other), etag, "{field}");
    }
    let used = ServiceToken {
        last_used_at: Some(later),
        previous_secret: Some(PreviousSecret {
            expiration: later,
            last_used_at: Some(later),
        }),
        ..token.clone()
    };
    assert_eq!(Etag::of(&used), etag);
    assert!(etag.matches(&used));
}

#[test]
fn an_etag_reads_back_quoted_or_bare_and_nothing_else() {
    let (_, stored) = StoredToken::sample();
    let etag = Etag::of(&stored.token);
    let text = etag.to_string();
    assert_eq!(text.len(), 34);
    assert_eq!(Etag::parse("etag", &text).unwrap(), etag);
    assert_eq!(Etag::parse("etag", text.trim_matches('"')).unwrap(), etag);
    assert_eq!(Etag::parse("etag", &text.to_uppercase()).unwrap(), etag);
    for bad in [
        "",
        "\"\"",
        "W/\"00\"",
        &format!("W/{text}"),
        &text[..20],
        "*",
        &format!("{text},{text}"),
    ] {
        let error = Etag::parse("etag", bad).unwrap_err();
        assert_eq!(error.field, "etag");
        assert!(!error.problem.contains(bad) || bad.is_empty(), "{bad}");
    }
}

#[test]
fn ids_are_positive_and_json_safe() {
    assert_eq!(TokenId::parse(0).unwrap_err().field, "id");
    assert!(TokenId::parse(MAX_ID + 1).is_err());
    assert_eq!(TokenId::parse(MAX_ID).unwrap().get(), MAX_ID);
    for _ in 0..1000 {
        let id = TokenId::random().get();
        assert!((1..=MAX_ID).contains(&id));
    }
}

#[test]
fn names_are_trimmed_and_bounded() {
    assert_eq!(TokenName::parse("  ci  ").unwrap().as_str(), "ci");
    assert_eq!(TokenName::parse(" \t ").unwrap_err().problem, "is required");
    assert!(TokenName::parse(&"é".repeat(MAX_NAME_CHARS)).is_ok());
    assert!(TokenName::parse(&"é".repeat(MAX_NAME_CHARS + 1)).is_err());
    assert!(TokenName::parse("a\nb").is_err());
    for spoof in [
        "evil\u{202e}gnp.exe",
        "a\u{200b}b",
        "\u{2066}x\u{2069}",
        "\u{feff}ci",
    ] {
        assert_eq!(
            TokenName::parse(spoof).unwrap_err().problem,
            "must not contain invisible Unicode format characters (bidi controls, zero-width characters)",
            "{spoof:?}"
        );
        // Stored by an earlier release: still read back.
        assert!(TokenName::read_back(spoof).is_ok());
    }
    for invisible in ["\u{200b}", " \u{200b}\u{200d} ", "\u{202e}"] {
        assert_eq!(
            TokenName::parse(invisible).unwrap_err().problem,
            "is empty once its invisible format characters are removed"
        );
    }
    assert!(TokenName::parse("caf\u{e9} \u{1f600}").is_ok());
}

#[test]
fn names_that_break_lines_look_blank_or_spill_over_are_refused() {
    for misleading in [
        "a\u{2028}b",
        "a\u{2029}b",
        "ci\u{a0}deploy",
        "ci\u{3000}deploy",
        "ci\u{2009}deploy",
        "\u{3164}",
        "a\u{2800}b",
        "a\u{e000}b",
        "a\u{f0000}b",
        "a\u{0378}b",
    ] {
        let refused = TokenName::parse(misleading).unwrap_err();
        assert!(
            refused.problem.contains("line separators"),
            "{misleading:?}"
        );
        // An earlier release's stored name still reads back.
        assert!(TokenName::read_back(misleading).is_ok());
    }
    let marks = |n: usize| format!("e{}", "\u{301}".repeat(n));
    assert!(TokenName::parse(&marks(MAX_COMBINING_MARKS)).is_ok());
    let zalgo = TokenName::parse(&marks(MAX_COMBINING_MARKS + 1)).unwrap_err();
    assert!(zalgo.problem.contains("combining marks"), "{zalgo:?}");
    // Scripts that need marks are fine.
    for fine in [
        "\u{928}\u{92e}\u{938}\u{94d}\u{924}\u{947}",
        "ti\u{1ebf}ng vi\u{1ec7}t",
        "a b-c_d.e",
    ] {
        assert!(TokenName::parse(fine).is_ok(), "{fine:?}");
    }
}

#[test]
fn a_bootstrap_token_always_carries_the_admin_role() {
    let admin = Role::parse("admin").unwrap();
    let roles = |extra: &[&str]| {
        let new = NewToken::bootstrap("b", &admin, extra).unwrap();
        new.roles
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(roles(&[]), ["admin"]);
    assert_eq!(roles(&["reader"]), ["admin", "reader"]);
    assert_eq!(roles(&["reader", "admin"]), ["admin", "reader"]);
    let error = NewToken::bootstrap("b", &admin, &["a b"]).unwrap_err();
    assert_eq!(error.field, "roles[0]");
}

#[test]
fn roles_need_one_and_a_sane_alphabet() {
    assert_eq!(
        Roles::parse::<&str>(&[]).unwrap_err().field,
        "roles".to_owned()
    );
    let err = Roles::parse(&["ok", "has space"]).unwrap_err();
    assert_eq!(err.field, "roles[1]");
    assert!(err.problem.contains("' '"), "{err}");
    assert_eq!(Roles::parse(&["a", ""]).unwrap_err().field, "roles[1]");
    assert!(Roles::parse(&["a,b"]).is_err());
    assert!(Roles::parse(&["x".repeat(MAX_ROLE_CHARS + 1)]).is_err());
    let too_many: Vec<String> = (0..=MAX_ROLES).map(|i| format!("r{i}")).collect();
    assert!(Roles::parse(&too_many).is_err());
}

#[test]
fn a_record_verifies_only_against_its_own_hash() {
    let (token, stored) = StoredToken::sample();
    assert_eq!(stored.clone().verified(&token.hash()), Some(stored.clone()));
    let other = crate::token::Secret::generate().hash();
    assert_eq!(stored.verified(&other), None);
}

#[test]
fn stored_parts_are_parsed_like_requests() {
    let (_, stored) = StoredToken::sample();
    let roles = vec!["r".to_owned()];
    let parts = StoredParts::first_release(
        stored.token.id.get(),
        stored.hash.as_bytes(),
        "t",
        &roles,
        None,
        stored.token.created_at,
    );
    assert_eq!(StoredToken::from_parts(parts).unwrap(), stored);
    let short = StoredParts {
        hash: &[0; 31],
        ..parts
    };
    assert_eq!(
        StoredToken::from_parts(short).unwrap_err().field,
        "token_hash"
    );
    let unnamed = StoredParts { name: " ", ..parts };
    assert_eq!(StoredToken::from_parts(unnamed).unwrap_err().field, "name");
    let no_id = StoredParts { id: 0, ..parts };
    assert_eq!(StoredToken::from_parts(no_id).unwrap_err().field, "id");
}

#[test]
fn epoch_millis_keep_their_sub_second_part_either_side_of_1970() {
    let epoch = SystemTime::UNIX_EPOCH;
    let ms = std::time::Duration::from_millis;
    assert_eq!(parse_epoch_millis("t", 1_500).unwrap(), epoch + ms(1_500));
    assert_eq!(parse_epoch_millis("t", -1_500).unwrap(), epoch - ms(1_500));
    assert!(parse_epoch_millis("t", i64::MAX).is_err());
}

#[test]
fn label_keys_follow_kubernetes_and_values_are_displayable() {
    for key in ["team", "a", "app.kubernetes.io/name", "x/y-z_1.2", "A9"] {
        assert!(Labels::parse([(key, "v")]).is_ok(), "{key}");
    }
    for key in [
        "",
        "-a",
        "a-",
        "a b",
        "UPPER.example/x",
        "/name",
        "prefix/",
        "a/b/c",
        &"n".repeat(64),
    ] {
        let error = Labels::parse([(key, "v")]).unwrap_err();
        assert!(error.problem.starts_with("key "), "{key}: {error}");
    }
    assert!(Labels::parse([("k", "x".repeat(MAX_LABEL_VALUE_CHARS))]).is_ok());
    assert!(Labels::parse([("k", "x".repeat(MAX_LABEL_VALUE_CHARS + 1))]).is_err());
    assert!(Labels::parse([("k", "a\nb")]).is_err());
    assert!(Labels::parse([("k", "a\u{202e}b")]).is_err());
    let too_many: Vec<(String, &str)> = (0..=MAX_LABELS).map(|i| (format!("k{i}"), "")).collect();
    assert_eq!(Labels::parse(too_many).unwrap_err().field, "labels");
    let labels = Labels::parse([("b", "2"), ("a", "1")]).unwrap();
    assert_eq!(labels.to_string(), "a=1,b=2");
}

#[test]
fn descriptions_are_bounded_displayable_text() {
    assert_eq!(Description::parse("").unwrap(), Description::default());
    assert!(Description::parse(&"é".repeat(MAX_DESCRIPTION_CHARS)).is_ok());
    let long = Description::parse(&"é".repeat(MAX_DESCRIPTION_CHARS + 1)).unwrap_err();
    assert_eq!(long.field, "description");
    assert!(Description::parse("two\nlines").is_err());
    assert!(Description::parse("a\u{200b}b").is_err());
}

fn admin_token(roles: &[&str], expiration: Option<SystemTime>) -> ServiceToken {
    let new = NewToken::parse("admin", roles, expiration).unwrap();
    ServiceToken::new(TokenId::random(), &new, SystemTime::now())
}

#[test]
fn only_changes_that_take_admin_access_away_are_named() {
    let role = Role::parse("admin").unwrap();
    let now = SystemTime::now();
    let hour = std::time::Duration::from_secs(3600);
    let before = admin_token(&["admin"], None);
    let after = |edit: Edit| edit.apply(&before, now);
    let cases = [
        (None, Some("deleting")),
        (
            Some(after(Edit {
                disabled: Some(true),
                ..Edit::default()
            })),
            Some("disabling"),
        ),
        (
            Some(after(Edit {
                roles: Some(Roles::parse(&["reader"]).unwrap()),
                ..Edit::default()
            })),
            Some("removing the admin role from"),
        ),
        (
            Some(after(Edit {
                expiration: Some(Some(now + hour)),
                ..Edit::default()
            })),
            Some("letting expire"),
        ),
        (
            Some(after(Edit {
                name: Some(TokenName::parse("x").unwrap()),
                roles: Some(Roles::parse(&["admin", "reader"]).unwrap()),
                ..Edit::default()
            })),
            None,
        ),
    ];
    let margin = hour * 24;
    let rule = |before: &ServiceToken, after: Option<&ServiceToken>| {
        takes_admin_away(before, after, &role, now, now + margin)
    };
    for (after, expected) in cases {
        assert_eq!(rule(&before, after.as_ref()), expected);
    }
    // An expiration beyond the margin keeps access long enough: a year
    // away is allowed, a day less a second is not.
    let at = |expiration| Edit {
        expiration: Some(Some(expiration)),
        ..Edit::default()
    };
    let year = at(now + margin * 365).apply(&before, now);
    assert_eq!(rule(&before, Some(&year)), None);
    let short = at(now + margin - std::time::Duration::from_secs(1)).apply(&before, now);
    assert_eq!(rule(&before, Some(&short)), Some("letting expire"));
    // A later expiration gives time; an earlier one takes it.
    let expiring = admin_token(&["admin"], Some(now + hour));
    let later = at(now + hour * 2);
    assert_eq!(rule(&expiring, Some(&later.apply(&expiring, now))), None);
    let never = Edit {
        expiration: Some(None),
        ..Edit::default()
    };
    assert_eq!(rule(&expiring, Some(&never.apply(&expiring, now))), None);
    // An admin inside the margin already: a change that leaves its
    // access as it was (a rename) is allowed; one that shortens it is not.
    let rename = Edit {
        name: Some(TokenName::parse("x").unwrap()),
        ..Edit::default()
    };
    assert_eq!(rule(&expiring, Some(&rename.apply(&expiring, now))), None);
    assert_eq!(rule(&expiring, None), Some("deleting"));
    // Not an admin token: nothing to take away.
    let reader = admin_token(&["reader"], None);
    assert_eq!(rule(&reader, None), None);
}

#[test]
fn an_edit_names_exactly_the_fields_it_changed() {
    let before = admin_token(&["a"], None);
    let edit = Edit {
        name: Some(TokenName::parse("admin").unwrap()),
        roles: Some(Roles::parse(&["a", "b"]).unwrap()),
        disabled: Some(true),
        labels: Some(LabelEdit::Replace(Labels::parse([("team", "ci")]).unwrap())),
        ..Edit::default()
    };
    let after = edit.apply(&before, SystemTime::now());
    let changes = Edit::changes(&before, &after);
    let fields: Vec<&str> = changes.iter().map(|c| c.field).collect();
    assert_eq!(
        fields,
        ["roles", "labels", "disabled"],
        "the name did not change"
    );
    assert_eq!(
        (changes[0].old.as_str(), changes[0].new.as_str()),
        ("a", "a,b")
    );
    assert!(Edit::default().is_empty());
}

#[test]
fn a_rotation_keeps_the_old_secret_only_inside_the_token_s_life() {
    let (_, stored) = StoredToken::sample();
    let now = SystemTime::now();
    let minute = std::time::Duration::from_secs(60);
    let new = crate::token::Secret::generate().hash();
    let rotate = |until| Change::Rotate {
        hash: new,
        previous_until: until,
        renew: None,
        replacing: None,
    };
    let rotated = rotate(now + minute).apply(&stored, now);
    assert_eq!(rotated.hash, new);
    assert_eq!(rotated.previous_hash, Some(stored.hash));
    assert_eq!(
        rotated.token.previous_secret.unwrap().expiration,
        now + minute
    );
    assert_eq!(rotated.token.id, stored.token.id);
    let ended = rotate(now).apply(&stored, now);
    assert_eq!(
        (ended.previous_hash, ended.token.previous_secret),
        (None, None)
    );
    // Rotating again drops the first secret.
    let again = Change::Rotate {
        hash: crate::token::Secret::generate().hash(),
        previous_until: now + minute,
        renew: None,
        replacing: None,
    }
    .apply(&rotated, now);
    assert_eq!(again.previous_hash, Some(new));
    // A renewal sets the expiration first, and the grace never outlives it.
    let renewed = Change::Rotate {
        hash: crate::token::Secret::generate().hash(),
        previous_until: now + 10 * minute,
        renew: Some(Some(now + 5 * minute)),
        replacing: Some(rotated.hash),
    }
    .apply(&rotated, now);
    assert_eq!(renewed.token.expiration, Some(now + 5 * minute));
    assert_eq!(
        renewed.token.previous_secret.unwrap().expiration,
        now + 5 * minute
    );
    // Shown without it once its grace period is over.
    let seen = rotated.token.clone().seen_at(now + minute);
    assert_eq!(seen.previous_secret, None);
}

#[test]
fn duplicate_roles_collapse_in_order() {
    let roles = Roles::parse(&["b", "a", "b"]).unwrap();
    let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
    assert_eq!(names, ["b", "a"]);
    assert!(roles.contains(&Role::parse("a").unwrap()));
}
