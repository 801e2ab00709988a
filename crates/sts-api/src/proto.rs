//! Code generated from `proto/` by `build.rs`: the `TokenService` client and
//! server and their messages, with a redacted `Debug` for every message
//! that carries a secret.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("stackstate.servicetoken.v1");

/// The encoded descriptors of our API and the types it imports, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("service_token_descriptor");

const REDACTED: &str = "<redacted>";

/// The protobuf codec the generated client and server use (`build.rs` names
/// it): tonic-prost's, with decode failures answered in a text of our own.
/// The code stays `INTERNAL`, as the gRPC specification has servers answer
/// an unparsable request; the fixed opening lets the gRPC layer tell this
/// refusal from the server's own faults (`grpc::undecodable`).
pub mod codec {
    use tonic::{
        Status,
        codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    };
    use tonic_prost::{ProstDecoder, ProstEncoder};

    /// How every decode failure's message begins.
    pub const UNDECODABLE: &str = "not a valid protobuf message of the expected type";

    pub struct ProstCodec<T, U>(tonic_prost::ProstCodec<T, U>);

    impl<T, U> Default for ProstCodec<T, U> {
        fn default() -> Self {
            ProstCodec(tonic_prost::ProstCodec::default())
        }
    }

    impl<T, U> Codec for ProstCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = OurDecoder<U>;

        fn encoder(&mut self) -> ProstEncoder<T> {
            self.0.encoder()
        }

        fn decoder(&mut self) -> OurDecoder<U> {
            OurDecoder(self.0.decoder())
        }
    }

    pub struct OurDecoder<U>(ProstDecoder<U>);

    impl<U: prost::Message + Default> Decoder for OurDecoder<U> {
        type Item = U;
        type Error = Status;

        /// Decodes from the message's bytes as one slice when they are
        /// contiguous (always, from tonic's buffer): prost reads a slice
        /// with plain pointer arithmetic, where through `DecodeBuf` every
        /// varint and skipped field goes through its bounds bookkeeping.
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            use bytes::Buf as _;
            let whole = buf.chunk();
            let decoded = if whole.len() == buf.remaining() {
                let len = whole.len();
                let decoded = U::decode(whole).map(Some);
                buf.advance(len);
                decoded
            } else {
                return self
                    .0
                    .decode(buf)
                    .map_err(|e| Status::internal(format!("{UNDECODABLE}: {}", e.message())));
            };
            // The same text as through tonic-prost's decoder below.
            decoded.map_err(|e| Status::internal(format!("{UNDECODABLE}: {e}")))
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}

impl std::fmt::Debug for CreateResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateResponse")
            .field("token", &REDACTED)
            .field("service_token", &self.service_token)
            .finish()
    }
}

impl std::fmt::Debug for RotateResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateResponse")
            .field("token", &REDACTED)
            .field("service_token", &self.service_token)
            .finish()
    }
}

impl std::fmt::Debug for RevokeLeakedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevokeLeakedRequest")
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .finish()
    }
}

impl std::fmt::Debug for ValidateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ValidateRequest {
            token: _,
            source_address,
            audience,
            http_method,
            path,
            cost,
        } = self;
        f.debug_struct("ValidateRequest")
            .field("token", &REDACTED)
            .field("source_address", source_address)
            .field("audience", audience)
            .field("http_method", http_method)
            .field("path", path)
            .field("cost", cost)
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
            ..ValidateRequest::default()
        };
        let rotate = RotateResponse {
            token: secret.into(),
            service_token: None,
        };
        for shown in [
            format!("{create:?}"),
            format!("{validate:?}"),
            format!("{rotate:?}"),
        ] {
            assert!(!shown.contains("secretsecret"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }
}
