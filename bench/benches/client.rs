//! What validating in the caller costs: a check the client crate answers
//! from its cache, and what `ValidateLayer` adds to a request, against a
//! real server in this process (sled, its Watch stream live).

use std::{convert::Infallible, hint::black_box, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use sts::{
    clock::SystemClock,
    config::{ServerConfig, ServiceConfig},
    model::NewToken,
    service::{self, TokenService},
    store::SledStore,
};
use sts_client::{Config, Context, ValidateLayer, Validator};
use tower::{Layer as _, ServiceExt as _, service_fn};

fn caller(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (validator, token) = runtime.block_on(async {
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let mint = |name: &str, role: &str| {
            let new = NewToken::parse(name, &[role], None).unwrap();
            let store = store.clone();
            async move {
                let (secret, _) = service::bootstrap(&*store, &SystemClock, new)
                    .await
                    .unwrap();
                secret.expose_secret().to_owned()
            }
        };
        let watcher = mint("bench-watcher", "token-watcher").await;
        let token = mint("bench-caller", "bench-reader").await;
        let service = Arc::new(TokenService::new(
            store.clone(),
            Arc::new(SystemClock),
            ServiceConfig::default(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(sts::server::run(
            listener,
            service,
            ServerConfig::default(),
            std::future::pending(),
        ));
        let config = Config::new(format!("http://{addr}"), watcher).unwrap();
        let validator = Validator::new(config).unwrap();
        // In sync, and the token cached, before anything is measured.
        while !validator.health().answering_from_cache {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while validator.health().cached == 0 {
            validator
                .validate(&token, &Context::default())
                .await
                .unwrap();
        }
        (validator, token)
    });

    let context = Context::default();
    c.bench_function("client: a check answered from the cache", |b| {
        b.to_async(&runtime)
            .iter(|| validator.validate(black_box(&token), &context))
    });

    let bare = service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    let layered = ValidateLayer::new(validator.clone())
        .require_role("bench-reader")
        .layer(bare);
    let request = || {
        http::Request::get("/hello")
            .header("x-api-key", token.as_str())
            .body(())
            .unwrap()
    };
    c.bench_function("client: a request without the layer", |b| {
        b.to_async(&runtime)
            .iter(|| bare.oneshot(black_box(request())))
    });
    c.bench_function("client: a request through ValidateLayer (cached)", |b| {
        b.to_async(&runtime).iter(|| async {
            let answer = layered.clone().oneshot(black_box(request())).await.unwrap();
            assert_eq!(answer.status(), 200);
        })
    });
}

criterion_group!(benches, caller);
criterion_main!(benches);
