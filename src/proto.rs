//! Code generated from `proto/` by `build.rs`, fenced in here so nothing else
//! depends on generated names directly.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("stackstate.servicetoken.v1");

/// The encoded descriptors of our API and the types it imports, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("service_token_descriptor");

const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for CreateResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateResponse")
            .field("token", &REDACTED)
            .field("service_token", &self.service_token)
            .finish()
    }
}

impl std::fmt::Debug for ValidateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateRequest")
            .field("token", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_secrets_redact_them_in_debug() {
        let secret = "svctok-secretsecretsecret";
        let create = CreateResponse {
            token: secret.into(),
            service_token: None,
        };
        let validate = ValidateRequest {
            token: secret.into(),
        };
        for shown in [format!("{create:?}"), format!("{validate:?}")] {
            assert!(!shown.contains("secretsecret"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }
}
