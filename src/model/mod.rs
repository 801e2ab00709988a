//! The domain values the service works with, each built by a `parse` that
//! says which field is wrong and why, so handlers only ever see valid values.
//!
//! `fields` holds the parsed values, `binding` what a token may be bound to
//! (sources, audiences, routes) and how a check meets it, `route` the
//! route rules and the request path they match, `shared` how a token
//! holds a list of its bindings, `owners` the chain of managers above a token, `order` the orders a list can be in, `token` the token
//! as the service sees it, `change` what a change does, `query` what a question over many
//! tokens selects, `recent` the sources a token was last seen from, `rate_limit` how often it may be checked, `stored` the token on its way into and out of a store, `usage` its checks per day, `session` a console session.

mod binding;
mod change;
mod fields;
mod order;
mod owners;
mod query;
mod rate_limit;
mod recent;
mod route;
mod session;
mod shared;
mod stored;
mod token;
mod usage;

pub use binding::*;
pub use change::*;
pub use fields::*;
pub use order::*;
pub use owners::*;
pub use query::*;
pub use rate_limit::*;
pub use recent::*;
pub use route::*;
pub use session::*;
pub use stored::*;
pub use token::*;
pub use usage::*;

#[cfg(test)]
mod tests;
