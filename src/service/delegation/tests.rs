//! The delegation rules, exhaustively over small sets of roles, and a
//! property: no sequence of manager and self operations escalates.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::model::{AllowedSources, Bindings, NewToken, Owners, RateLimits, Roles, TokenId};

const ADMIN: &str = "admin";
const MANAGER: &str = "manager";
/// Every role the tests use: the two that decide, and two plain ones.
const ROLES: [&str; 4] = [ADMIN, MANAGER, "a", "b"];

fn role(name: &str) -> Role {
    Role::parse(name).unwrap()
}

fn epoch(days: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + days * 86_400)
}

fn token(id: u64, roles: &[&str], expiration: Option<SystemTime>, owners: &Owners) -> ServiceToken {
    let mut new = NewToken::parse(&format!("t{id}"), roles, expiration).unwrap();
    new.owners = owners.clone();
    ServiceToken::new(TokenId::parse(id).unwrap(), &new, epoch(0))
}

/// Every non-empty subset of `ROLES`, as role names.
fn role_sets() -> Vec<Vec<&'static str>> {
    (1u32..16)
        .map(|bits| {
            ROLES
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, r)| *r)
                .collect()
        })
        .collect()
}

/// The rule as the issue states it, written independently of `judge`: a
/// manager grants a role it holds, never the admin role, the manager role
/// only where managers may delegate.
fn may_grant(caller: &[&str], target: &[&str], may_delegate: bool) -> bool {
    target
        .iter()
        .all(|r| *r != ADMIN && (*r != MANAGER || may_delegate) && caller.contains(r))
}

fn with_rules<T>(may_delegate: bool, f: impl FnOnce(&Rules<'_>) -> T) -> T {
    let (admin, manager) = (role(ADMIN), role(MANAGER));
    f(&Rules {
        admin_role: &admin,
        manager_role: &manager,
        may_delegate,
    })
}

#[test]
fn creating_grants_only_what_the_manager_could_grant_over_every_small_set_of_roles() {
    for may_delegate in [false, true] {
        for caller_roles in role_sets() {
            let caller = token(1, &caller_roles, None, &Owners::NONE);
            let chain = Owners::under("owner", caller.id, &caller.owners).unwrap();
            for target_roles in role_sets() {
                let made = token(2, &target_roles, None, &chain);
                let verdict = with_rules(may_delegate, |rules| {
                    judge(rules, &caller, &[], Act::Create(&made))
                });
                let expected = caller_roles.contains(&ADMIN)
                    || (caller_roles.contains(&MANAGER)
                        && may_grant(&caller_roles, &target_roles, may_delegate));
                assert_eq!(
                    verdict.is_ok(),
                    expected,
                    "caller {caller_roles:?} making {target_roles:?} (delegate: {may_delegate}): {verdict:?}"
                );
                if let Err(Refusal::Denied(why)) = &verdict
                    && caller_roles.contains(&MANAGER)
                {
                    // The refusal names the role.
                    assert!(
                        target_roles.iter().any(|r| why.contains(&format!("`{r}`"))),
                        "{why}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_manager_reaches_exactly_the_tokens_it_owns_with_roles_it_could_grant() {
    for may_delegate in [false, true] {
        for caller_roles in role_sets()
            .into_iter()
            .filter(|r| r.contains(&MANAGER) && !r.contains(&ADMIN))
        {
            let caller = token(1, &caller_roles, None, &Owners::NONE);
            let mine = Owners::under("owner", caller.id, &Owners::NONE).unwrap();
            let grandchild = Owners::under("owner", TokenId::parse(7).unwrap(), &mine).unwrap();
            let others = Owners::under("owner", TokenId::parse(9).unwrap(), &Owners::NONE).unwrap();
            for target_roles in role_sets() {
                for (chain, owned) in [
                    (&mine, true),
                    (&grandchild, true),
                    (&others, false),
                    (&Owners::NONE, false),
                ] {
                    let target = token(2, &target_roles, None, chain);
                    let verdict = with_rules(may_delegate, |rules| {
                        judge(rules, &caller, &[], Act::Reach(&target))
                    });
                    let expected = owned && may_grant(&caller_roles, &target_roles, may_delegate);
                    assert_eq!(
                        verdict.clone().is_ok(),
                        expected,
                        "{caller_roles:?} reaching {target_roles:?} owned {owned}"
                    );
                    if !expected {
                        assert_eq!(verdict, Err(Refusal::NotYours));
                    }
                }
            }
            // Never itself, even were it in its own chain.
            let itself = token(1, &caller_roles, None, &mine);
            assert_eq!(
                with_rules(may_delegate, |rules| judge(
                    rules,
                    &caller,
                    &[],
                    Act::Reach(&itself)
                )),
                Err(Refusal::NotYours)
            );
        }
    }
}

#[test]
fn a_change_by_a_manager_adds_only_grantable_roles_and_keeps_the_owner() {
    for may_delegate in [false, true] {
        for caller_roles in role_sets()
            .into_iter()
            .filter(|r| r.contains(&MANAGER) && !r.contains(&ADMIN))
        {
            let caller = token(1, &caller_roles, None, &Owners::NONE);
            let mine = Owners::under("owner", caller.id, &Owners::NONE).unwrap();
            let before = token(2, &["a"], None, &mine);
            for after_roles in role_sets() {
                let mut after = before.clone();
                after.roles = Roles::parse(&after_roles).unwrap();
                let verdict = with_rules(may_delegate, |rules| {
                    judge(
                        rules,
                        &caller,
                        &[],
                        Act::Change {
                            before: &before,
                            after: &after,
                        },
                    )
                });
                let reachable = caller_roles.contains(&"a");
                let expected = reachable && may_grant(&caller_roles, &after_roles, may_delegate);
                assert_eq!(
                    verdict.is_ok(),
                    expected,
                    "{caller_roles:?}: a -> {after_roles:?}"
                );
            }
            if caller_roles.contains(&"a") {
                let mut moved = before.clone();
                moved.owners = Owners::NONE;
                let verdict = with_rules(may_delegate, |rules| {
                    judge(
                        rules,
                        &caller,
                        &[],
                        Act::Change {
                            before: &before,
                            after: &moved,
                        },
                    )
                });
                assert!(
                    matches!(verdict, Err(Refusal::Denied(why)) if why.starts_with("owner_id"))
                );
            }
        }
    }
}

#[test]
fn a_managers_tokens_expire_no_later_than_it_and_are_bound_and_limited_within_it() {
    let mut caller = token(1, &[MANAGER, "a"], Some(epoch(30)), &Owners::NONE);
    caller.bindings = Bindings {
        sources: AllowedSources::parse("s", &["10.0.0.0/8"]).unwrap(),
        ..Bindings::default()
    };
    caller.rate_limits = RateLimits::parse_texts("r", &["m=60/1m"]).unwrap();
    let chain = Owners::under("owner", caller.id, &Owners::NONE).unwrap();
    let made = |expiration, sources: &[&str], limits: &[&str]| {
        let mut t = token(2, &["a"], expiration, &chain);
        t.bindings.sources = AllowedSources::parse("s", sources).unwrap();
        t.rate_limits = RateLimits::parse_texts("r", limits).unwrap();
        t
    };
    let verdict =
        |t: &ServiceToken| with_rules(false, |rules| judge(rules, &caller, &[], Act::Create(t)));
    let ok = made(Some(epoch(30)), &["10.1.0.0/16"], &["x=1/1s"]);
    assert_eq!(verdict(&ok), Ok(()));
    for (t, field) in [
        (
            made(Some(epoch(31)), &["10.1.0.0/16"], &["x=1/1s"]),
            "expiration",
        ),
        (made(None, &["10.1.0.0/16"], &["x=1/1s"]), "expiration"),
        (made(Some(epoch(1)), &[], &["x=1/1s"]), "allowed_sources"),
        (
            made(Some(epoch(1)), &["11.0.0.0/8"], &["x=1/1s"]),
            "allowed_sources",
        ),
        (made(Some(epoch(1)), &["10.0.0.0/8"], &[]), "rate_limits"),
        // A larger burst, though no faster.
        (
            made(Some(epoch(1)), &["10.0.0.0/8"], &["x=120/2m"]),
            "rate_limits",
        ),
        // A faster rate, though no larger burst.
        (
            made(Some(epoch(1)), &["10.0.0.0/8"], &["x=60/30s"]),
            "rate_limits",
        ),
    ] {
        assert!(
            matches!(verdict(&t), Err(Refusal::Denied(why)) if why.starts_with(field)),
            "{field}: {:?}",
            verdict(&t)
        );
    }
    // A change never widens what the token had, and an untouched
    // expiration past the manager's is left alone.
    let mut before = made(Some(epoch(40)), &["10.1.0.0/16"], &["x=10/1s"]);
    before.id = TokenId::parse(3).unwrap();
    let change = |after: &ServiceToken| {
        with_rules(false, |rules| {
            judge(
                rules,
                &caller,
                &[],
                Act::Change {
                    before: &before,
                    after,
                },
            )
        })
    };
    let mut renamed = before.clone();
    renamed.description = crate::model::Description::parse("d").unwrap();
    assert_eq!(change(&renamed), Ok(()));
    let mut wider = before.clone();
    wider.bindings.sources = AllowedSources::parse("s", &["10.0.0.0/8"]).unwrap();
    assert!(matches!(change(&wider), Err(Refusal::Denied(w)) if w.starts_with("allowed_sources")));
    let mut looser = before.clone();
    looser.rate_limits = RateLimits::parse_texts("r", &["x=11/1s"]).unwrap();
    assert!(matches!(change(&looser), Err(Refusal::Denied(w)) if w.starts_with("rate_limits")));
    let mut tighter = before.clone();
    tighter.rate_limits = RateLimits::parse_texts("r", &["x=5/1s", "y=100/1h"]).unwrap();
    assert_eq!(change(&tighter), Ok(()));
    let mut later = before.clone();
    later.expiration = Some(epoch(41));
    assert!(matches!(change(&later), Err(Refusal::Denied(w)) if w.starts_with("expiration")));
    let mut sooner = before.clone();
    sooner.expiration = Some(epoch(20));
    assert_eq!(change(&sooner), Ok(()));
}

#[test]
fn a_renewal_is_its_lifetime_from_now_within_every_bound() {
    let now = epoch(100);
    let mut t = token(2, &["a"], Some(epoch(90)), &Owners::NONE);
    t.lifetime = Some(Duration::from_secs(90 * 86_400));
    let bounds = Renewal::default();
    assert_eq!(renewal(&t, &[], None, now, bounds), Ok(Some(epoch(190))));
    let capped = Renewal {
        max_lifetime: Some(Duration::from_secs(30 * 86_400)),
        max_age: None,
    };
    assert_eq!(renewal(&t, &[], None, now, capped), Ok(Some(epoch(130))));
    assert!(matches!(
        renewal(&t, &[], Some(epoch(131)), now, capped),
        Err(RenewalRefusal::PastBound { bound }) if bound.contains("--max-token-lifetime")
    ));
    let aged = Renewal {
        max_lifetime: None,
        max_age: Some(Duration::from_secs(150 * 86_400)),
    };
    assert_eq!(renewal(&t, &[], None, now, aged), Ok(Some(epoch(150))));
    let old = Renewal {
        max_lifetime: None,
        max_age: Some(Duration::from_secs(100 * 86_400)),
    };
    assert_eq!(
        renewal(&t, &[], None, now, old),
        Err(RenewalRefusal::TooOld)
    );
    let owner = token(1, &[MANAGER, "a"], Some(epoch(120)), &Owners::NONE);
    assert_eq!(
        renewal(&t, std::slice::from_ref(&owner), None, now, bounds),
        Ok(Some(epoch(120)))
    );
    assert!(matches!(
        renewal(&t, &[owner], Some(epoch(121)), now, bounds),
        Err(RenewalRefusal::PastBound { bound }) if bound.contains("token 1")
    ));
    // No expiration stays none, unless a policy requires one.
    let forever = token(3, &["a"], None, &Owners::NONE);
    assert_eq!(renewal(&forever, &[], None, now, bounds), Ok(None));
    assert_eq!(
        renewal(&forever, &[], None, now, capped),
        Ok(Some(epoch(130)))
    );
}

/// One step of the property: who acts, and what it asks for.
#[derive(Debug, Clone)]
enum Step {
    /// Token `caller` (an index into the tokens, modulo) makes a token
    /// with the roles of `roles` (bits over `ROLES`) expiring in `days`.
    Create {
        caller: usize,
        roles: u8,
        days: Option<u8>,
    },
    /// Token `caller` changes token `target`'s roles and expiration.
    Update {
        caller: usize,
        target: usize,
        roles: u8,
        days: Option<u8>,
    },
    /// Token `target` rotates itself, asking for `days` or its default.
    RotateSelf {
        target: usize,
        days: Option<u8>,
        after: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<usize>(), 1u8..16, proptest::option::of(1u8..200)).prop_map(
            |(caller, roles, days)| Step::Create {
                caller,
                roles,
                days
            }
        ),
        (
            any::<usize>(),
            any::<usize>(),
            1u8..16,
            proptest::option::of(1u8..200)
        )
            .prop_map(|(caller, target, roles, days)| Step::Update {
                caller,
                target,
                roles,
                days
            }),
        (any::<usize>(), proptest::option::of(1u8..200), 0u8..40).prop_map(
            |(target, days, after)| Step::RotateSelf {
                target,
                days,
                after
            }
        ),
    ]
}

fn roles_of(bits: u8) -> Vec<&'static str> {
    ROLES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, r)| *r)
        .collect()
}

/// The owners of `token` among `tokens`, as the service reads them.
fn above(tokens: &[ServiceToken], token: &ServiceToken) -> Vec<ServiceToken> {
    token
        .owners
        .ids()
        .iter()
        .filter_map(|id| tokens.iter().find(|t| t.id == *id).cloned())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever managers and tokens do for themselves, as the service runs
    /// it (judge, then the act; renewal for a self-rotation), every token
    /// holds only roles an admin granted to the top of its chain (never
    /// the admin role); no expiration a manager sets passes its own or
    /// that of a manager above it (a manager higher in a token's chain may
    /// give it longer than a sub-manager between them has: it could have
    /// made that token itself); and none a self-rotation gives passes any
    /// owner's.
    #[test]
    fn no_sequence_of_manager_and_self_operations_escalates(
        granted in proptest::collection::vec((1u8..16, proptest::option::of(1u8..200)), 1..4),
        steps in proptest::collection::vec(step(), 1..40),
        may_delegate in any::<bool>(),
    ) {
        let mut now = epoch(0);
        // Made by an admin: the roots, and what each was granted.
        let mut tokens: Vec<ServiceToken> = granted
            .iter()
            .enumerate()
            .map(|(i, (bits, days))| {
                let roles: Vec<&str> = roles_of(*bits).into_iter().filter(|r| *r != ADMIN).collect();
                let roles = if roles.is_empty() { vec![MANAGER] } else { roles };
                token(i as u64 + 1, &roles, days.map(|d| epoch(u64::from(d))), &Owners::NONE)
            })
            .collect();
        let roots: Vec<(TokenId, Roles)> = tokens.iter().map(|t| (t.id, t.roles.clone())).collect();
        let bounds = Renewal { max_lifetime: Some(Duration::from_secs(90 * 86_400)), max_age: None };
        for step in steps {
            let n = tokens.len();
            // The token changed, whether its expiration was set, and the
            // tokens whose expirations bound the one set.
            let changed = with_rules(may_delegate, |rules| -> Option<(usize, bool, Vec<TokenId>)> {
                match step {
                    Step::Create { caller, roles, days } => {
                        let caller = tokens[caller % n].clone();
                        let owners = Owners::under("owner", caller.id, &caller.owners).ok()?;
                        let made = token(n as u64 + 1, &roles_of(roles), days.map(|d| now + Duration::from_secs(u64::from(d) * 86_400)), &owners);
                        judge(rules, &caller, &above(&tokens, &caller), Act::Create(&made)).ok()?;
                        let bounds = made.owners.ids().to_vec();
                        tokens.push(made);
                        Some((n, true, bounds))
                    }
                    Step::Update { caller, target, roles, days } => {
                        let (caller, target) = (caller % n, target % n);
                        let mut after = tokens[target].clone();
                        after.roles = Roles::parse(&roles_of(roles)).ok()?;
                        after.expiration = days.map(|d| now + Duration::from_secs(u64::from(d) * 86_400));
                        judge(rules, &tokens[caller], &above(&tokens, &tokens[caller]), Act::Change { before: &tokens[target], after: &after }).ok()?;
                        let moved = after.expiration != tokens[target].expiration;
                        tokens[target] = after;
                        let acting = &tokens[caller];
                        let bounds = std::iter::once(acting.id).chain(acting.owners.ids().iter().copied()).collect();
                        Some((target, moved, bounds))
                    }
                    Step::RotateSelf { target, days, after } => {
                        now += Duration::from_secs(u64::from(after) * 86_400);
                        let target = target % n;
                        let owners = above(&tokens, &tokens[target]);
                        let requested = days.map(|d| now + Duration::from_secs(u64::from(d) * 86_400));
                        let expiration = renewal(&tokens[target], &owners, requested, now, bounds).ok()?;
                        tokens[target].expiration = expiration;
                        let bounds = tokens[target].owners.ids().to_vec();
                        Some((target, true, bounds))
                    }
                }
            });
            let Some((changed, expiration_set, bounds)) = changed else { continue };
            let t = &tokens[changed];
            // Roles: only what an admin granted the top of the chain.
            let top = t.owners.ids().last().copied().unwrap_or(t.id);
            let (_, granted) = roots.iter().find(|(id, _)| *id == top).expect("every chain ends at a root");
            for role in t.roles.iter() {
                prop_assert!(granted.contains(role), "token {} holds {role}, not granted to {top}", t.id);
                prop_assert!(role.as_str() != ADMIN);
            }
            // Expiration: none set past a bounding token's, as they stand
            // then. (A manager that gets an expiration later, as a
            // self-rotation under a maximum lifetime gives one, leaves
            // the tokens it made as they are, as deleting it does.)
            if !expiration_set {
                continue;
            }
            for bound in &bounds {
                // The acting manager may be the token itself (a manager
                // changing its own expiration within those above it).
                if *bound == t.id {
                    continue;
                }
                let owner = tokens.iter().find(|o| o.id == *bound).unwrap();
                if let Some(cap) = owner.expiration {
                    prop_assert!(t.expiration.is_some_and(|e| e <= cap), "token {} outlives {}", t.id, owner.id);
                }
            }
        }
    }
}
