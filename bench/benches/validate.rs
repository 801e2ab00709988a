//! Micro-benchmarks of the validate path without the network: token parse
//! and checksum, hash, store lookup, and the whole `TokenService::validate`.

use std::{hint::black_box, sync::Arc, time::SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use sts::{
    clock::SystemClock,
    config::ServiceConfig,
    model::{CheckContext, NewToken, Roles, TokenName},
    service::TokenService,
    store::{SledStore, Store},
    token::Secret,
};

fn validate_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let token = Secret::generate();
    let bound_token = Secret::generate();
    let new = |i: u64| NewToken {
        name: TokenName::parse(&format!("bench-{i}")).unwrap(),
        roles: Roles::parse(&["bench-reader"]).unwrap(),
        expiration: None,
        description: Default::default(),
        labels: Default::default(),
        created_by: String::new(),
        bindings: Default::default(),
        rate_limits: None,
        owners: Default::default(),
    };
    runtime
        .block_on(
            store.insert_many(
                (0..10_000u64)
                    .map(|i| {
                        let t = if i == 5_000 {
                            token.clone()
                        } else {
                            Secret::generate()
                        };
                        (t.hash(), new(i))
                    })
                    .chain(std::iter::once((bound_token.hash(), bound(&new(10_000))))),
                SystemTime::now(),
            ),
        )
        .unwrap();
    let service = TokenService::new(
        store.clone(),
        Arc::new(SystemClock),
        ServiceConfig::default(),
    );
    let secret = token.expose_secret().to_owned();
    let hash = token.hash();
    let unknown = Secret::generate().expose_secret().to_owned();
    let bound_secret = bound_token.expose_secret().to_owned();
    let none = CheckContext::default();
    // The last network, audience and route of each list: a check walks
    // them all before it matches.
    let context = CheckContext {
        source: Some("127.0.0.9".parse().unwrap()),
        audience: Some("bench-audience-1"),
        route: Some(("GET", "/api/v15/items/42?page=2")),
    };

    c.bench_function("parse+checksum", |b| {
        b.iter(|| Secret::parse(black_box(&secret)))
    });
    c.bench_function("sha256", |b| b.iter(|| black_box(&token).hash()));
    c.bench_function("store lookup (10k tokens)", |b| {
        b.to_async(&runtime)
            .iter(|| store.find_by_hash(black_box(&hash)))
    });
    c.bench_function("validate valid (10k tokens)", |b| {
        b.to_async(&runtime)
            .iter(|| service.validate(black_box(&secret), &none))
    });
    c.bench_function(
        "validate valid, with a context, unbound (10k tokens)",
        |b| {
            b.to_async(&runtime)
                .iter(|| service.validate(black_box(&secret), &context))
        },
    );
    c.bench_function(
        "validate valid, bound to 8 CIDRs, 2 audiences, 16 routes (10k tokens)",
        |b| {
            b.to_async(&runtime)
                .iter(|| service.validate(black_box(&bound_secret), &context))
        },
    );
    let bindings = bound(&new(0)).bindings;
    c.bench_function(
        "the bindings' check alone (8 CIDRs, 2 audiences, 16 routes)",
        |b| b.iter(|| bindings.admits(black_box(&context))),
    );
    c.bench_function("validate unknown", |b| {
        b.to_async(&runtime)
            .iter(|| service.validate(black_box(&unknown), &none))
    });
    c.bench_function("validate malformed", |b| {
        b.to_async(&runtime)
            .iter(|| service.validate(black_box("svctok-not-a-token"), &none))
    });
}

/// `new`, bound as the benchmarks' bound token is (the budget
/// case: within 10 % of an unbound token).
fn bound(new: &NewToken) -> NewToken {
    new.clone().bound(sts_bench::bench_bindings().unwrap())
}

criterion_group!(benches, validate_path);
criterion_main!(benches);
