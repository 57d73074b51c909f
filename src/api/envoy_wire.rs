//! Reading Envoy's ext_authz `CheckRequest` straight off the wire.
//!
//! Envoy sends every request header, both peers' addresses, a timestamp and more. Decoding all
//! of it into the generated message (a `HashMap<String, String>` of headers among them) cost
//! more than the decision itself, and even a pruned prost view spent its time on per-field
//! buffer bookkeeping. A decision needs four things: method, path, one header (or the peer's
//! principal, or the jwt_authn metadata). So the request stays one received buffer, and
//! [`CheckRequestView`] walks the protobuf encoding to borrow those slices out of it: no copy,
//! no allocation, every other field skipped by its length.
//!
//! Field numbers are those of `envoy.service.auth.v3` (`attribute_context.proto`); the tests
//! below hold each against envoy-types' own encoding, and a property test against prost.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use prost::Message;
use prost::bytes::{Buf, Bytes};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Why a message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field's length or a varint runs past the end of its message.
    #[error("truncated message")]
    Truncated,
    /// A varint longer than ten bytes.
    #[error("malformed varint")]
    BadVarint,
    /// Field number 0, or a wire type protobuf does not define (or the deprecated groups).
    #[error("malformed field key")]
    BadKey,
}

/// A field's value as it sits on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Varint,
    Fixed,
    Bytes(&'a [u8]),
}

/// The fields of one encoded message, in wire order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn of(message: &'a [u8]) -> Fields<'a> {
        Fields { rest: message }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, byte) in self.rest.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.rest.len() < 10 {
            WireError::Truncated
        } else {
            WireError::BadVarint
        })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        if len > self.rest.len() {
            return Err(WireError::Truncated);
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn field(&mut self) -> Result<(u32, Value<'a>), WireError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::BadKey)?;
        if number == 0 {
            return Err(WireError::BadKey);
        }
        let value = match key & 7 {
            0 => {
                self.varint()?;
                Value::Varint
            }
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(WireError::BadKey),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

/// Calls `visit` with each length-delimited field of `message` (later ones after earlier ones,
/// so a repeated singular field ends up as its last occurrence, as protobuf says).
fn each_bytes_field<'a>(
    message: &'a [u8],
    mut visit: impl FnMut(u32, &'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    for field in Fields::of(message) {
        if let (number, Value::Bytes(bytes)) = field? {
            visit(number, bytes)?;
        }
    }
    Ok(())
}

/// What a decision reads of an ext_authz `CheckRequest`, borrowed from the received bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckRequestView<'a> {
    /// `attributes.request.http` (the whole encoded `HttpRequest`), when present.
    http: Option<&'a [u8]>,
    method: &'a [u8],
    path: &'a [u8],
    /// The value of the header named at parse time (see [`Self::parse`]).
    wanted_header: Option<&'a [u8]>,
    /// How many entries name that header, in the `headers` map and `header_map` together.
    wanted_header_count: usize,
    /// `attributes.source.principal`: the downstream peer's SPIFFE id under mTLS.
    principal: &'a [u8],
    /// `attributes.metadata_context` (encoded), where jwt_authn puts verified payloads.
    metadata_context: Option<&'a [u8]>,
}

// Field numbers, from envoy/service/auth/v3/{external_auth,attribute_context}.proto and
// envoy/config/core/v3/base.proto.
const CHECK_REQUEST_ATTRIBUTES: u32 = 1;
const ATTRIBUTES_SOURCE: u32 = 1;
const ATTRIBUTES_REQUEST: u32 = 4;
const ATTRIBUTES_METADATA_CONTEXT: u32 = 11;
const PEER_PRINCIPAL: u32 = 4;
const REQUEST_HTTP: u32 = 2;
const HTTP_METHOD: u32 = 2;
const HTTP_HEADERS: u32 = 3;
const HTTP_PATH: u32 = 4;
const HTTP_HEADER_MAP: u32 = 13;
const MAP_ENTRY_KEY: u32 = 1;
const MAP_ENTRY_VALUE: u32 = 2;
const HEADER_MAP_HEADERS: u32 = 1;
const HEADER_VALUE_KEY: u32 = 1;
const HEADER_VALUE_VALUE: u32 = 2;
const HEADER_VALUE_RAW_VALUE: u32 = 3;

/// What one pass over an encoded `HttpRequest` finds: method, path, and header `name` from the
/// `headers` map or, with `encode_raw_headers`, from `header_map` (a value in the map wins),
/// with the number of entries naming it.
#[derive(Default)]
struct HttpFields<'a> {
    method: &'a [u8],
    path: &'a [u8],
    in_map: Option<&'a [u8]>,
    in_header_map: Option<&'a [u8]>,
    count: usize,
}

impl<'a> HttpFields<'a> {
    /// Walks the fields of an encoded `HttpRequest` once, checking every header entry is
    /// well-formed. The map keeps its last value for a repeated name (protobuf map semantics);
    /// `header_map` its first. Every entry naming `name` is counted, so that a caller can refuse
    /// a repeated header whichever encoding Envoy used.
    fn scan(http: &'a [u8], name: &[u8]) -> Result<HttpFields<'a>, WireError> {
        let mut found = HttpFields::default();
        each_bytes_field(http, |number, bytes| {
            match number {
                HTTP_METHOD => found.method = bytes,
                HTTP_PATH => found.path = bytes,
                HTTP_HEADERS => {
                    let [key, value] = fields_of(bytes, [MAP_ENTRY_KEY, MAP_ENTRY_VALUE])?;
                    if key == name {
                        found.in_map = Some(value);
                        found.count += 1;
                    }
                }
                HTTP_HEADER_MAP => each_bytes_field(bytes, |number, header| {
                    if number == HEADER_MAP_HEADERS {
                        let [key, value, raw] = fields_of(
                            header,
                            [HEADER_VALUE_KEY, HEADER_VALUE_VALUE, HEADER_VALUE_RAW_VALUE],
                        )?;
                        if key == name {
                            found.count += 1;
                            if found.in_header_map.is_none() {
                                found.in_header_map =
                                    Some(if raw.is_empty() { value } else { raw });
                            }
                        }
                    }
                    Ok(())
                })?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(found)
    }

    fn header(&self) -> Option<&'a [u8]> {
        self.in_map.or(self.in_header_map)
    }
}

impl<'a> CheckRequestView<'a> {
    /// Reads an encoded `CheckRequest`, keeping the value of header `wanted_header` (lower case,
    /// as Envoy sends names) from the same pass over the headers. Every message on the way to
    /// the fields it keeps is checked to be well-formed, the header entries too.
    pub fn parse(
        message: &'a [u8],
        wanted_header: &str,
    ) -> Result<CheckRequestView<'a>, WireError> {
        let mut view = CheckRequestView::default();
        each_bytes_field(message, |number, attributes| {
            if number != CHECK_REQUEST_ATTRIBUTES {
                return Ok(());
            }
            each_bytes_field(attributes, |number, bytes| {
                match number {
                    ATTRIBUTES_SOURCE => each_bytes_field(bytes, |number, principal| {
                        if number == PEER_PRINCIPAL {
                            view.principal = principal;
                        }
                        Ok(())
                    })?,
                    ATTRIBUTES_REQUEST => each_bytes_field(bytes, |number, http| {
                        if number == REQUEST_HTTP {
                            view.read_http(http, wanted_header)?;
                        }
                        Ok(())
                    })?,
                    ATTRIBUTES_METADATA_CONTEXT => view.metadata_context = Some(bytes),
                    _ => {}
                }
                Ok(())
            })
        })?;
        Ok(view)
    }

    fn read_http(&mut self, http: &'a [u8], wanted_header: &str) -> Result<(), WireError> {
        let fields = HttpFields::scan(http, wanted_header.as_bytes())?;
        self.http = Some(http);
        self.method = fields.method;
        self.path = fields.path;
        self.wanted_header = fields.header();
        self.wanted_header_count = fields.count;
        Ok(())
    }

    /// Method and raw path as text, when the request has an HTTP part and both are UTF-8
    /// (Envoy sends them as protobuf strings, so anything else is a malformed request).
    pub fn method_and_path(&self) -> Option<(&'a str, &'a str)> {
        self.http?;
        Some((
            std::str::from_utf8(self.method).ok()?,
            std::str::from_utf8(self.path).ok()?,
        ))
    }

    /// The value of the header named when parsing.
    pub fn wanted_header(&self) -> Option<&'a [u8]> {
        self.wanted_header
    }

    /// How many header entries name the header named when parsing. Envoy's `headers` map
    /// holds one entry per name (repeated headers joined with `,`); with `encode_raw_headers`,
    /// `header_map` holds one entry per header line, so a repeated header counts more than once.
    pub fn wanted_header_count(&self) -> usize {
        self.wanted_header_count
    }

    /// The value of any header `name` (lower case), by another pass over the headers.
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        // `parse` checked every entry, so this scan cannot fail.
        HttpFields::scan(self.http?, name.as_bytes()).ok()?.header()
    }

    /// The downstream peer's principal (empty when none).
    pub fn principal(&self) -> &'a [u8] {
        self.principal
    }

    /// The dynamic metadata, decoded only when asked for (the jwt subject source).
    pub fn metadata_context(&self) -> Option<Metadata> {
        Metadata::decode(self.metadata_context?).ok()
    }
}

/// The length-delimited fields `numbers` of `message`, in one pass (empty when absent; the last
/// occurrence wins): the key and value of a map entry, or a HeaderValue's key, value and raw
/// value.
fn fields_of<const N: usize>(message: &[u8], numbers: [u32; N]) -> Result<[&[u8]; N], WireError> {
    let mut found: [&[u8]; N] = [&[]; N];
    each_bytes_field(message, |number, bytes| {
        if let Some(at) = numbers.iter().position(|&n| n == number) {
            found[at] = bytes;
        }
        Ok(())
    })?;
    Ok(found)
}

/// The ext_authz codec: answers are encoded by prost; requests are handed over as the received
/// bytes, for [`CheckRequestView`] to read.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExtAuthzCodec;

impl Codec for ExtAuthzCodec {
    type Encode = CheckResponse;
    type Decode = Bytes;
    type Encoder = ProstEncoder<CheckResponse>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// Takes a whole received message without copying it.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, HeaderMap, HeaderValue, SocketAddress, address,
    };
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context,
    };
    use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
    use proptest::prelude::*;

    fn full_request(http: attribute_context::HttpRequest) -> CheckRequest {
        let peer = |principal: &str| attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "10.0.0.1".into(),
                    ..Default::default()
                })),
            }),
            service: "svc".into(),
            principal: principal.into(),
            certificate: "cert".into(),
            ..Default::default()
        };
        let claims = Struct {
            fields: [(
                "sub".to_string(),
                PbValue {
                    kind: Some(Kind::StringValue("alice".into())),
                },
            )]
            .into_iter()
            .collect(),
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer("spiffe://cluster.local/ns/a/sa/app")),
                destination: Some(peer("spiffe://cluster.local/ns/b/sa/api")),
                request: Some(attribute_context::Request {
                    time: Some(Default::default()),
                    http: Some(http),
                }),
                context_extensions: [("x-subject".to_string(), "not-a-header".to_string())]
                    .into_iter()
                    .collect(),
                metadata_context: Some(Metadata {
                    filter_metadata: [("jwt".to_string(), claims)].into_iter().collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn reads_method_path_headers_principal_and_metadata_of_a_full_request() {
        let request = full_request(attribute_context::HttpRequest {
            id: "1".into(),
            method: "POST".into(),
            path: "/v1/devices?x=1".into(),
            host: "app".into(),
            size: 12,
            headers: [
                (":method".to_string(), "POST".to_string()),
                ("x-subject".to_string(), "dashboard".to_string()),
                ("user-agent".to_string(), "curl".to_string()),
            ]
            .into_iter()
            .collect(),
            body: "ignored".into(),
            ..Default::default()
        });
        let bytes = request.encode_to_vec();
        let view = CheckRequestView::parse(&bytes, "x-subject").unwrap();
        assert_eq!(view.method_and_path(), Some(("POST", "/v1/devices?x=1")));
        assert_eq!(view.header("x-subject"), Some(&b"dashboard"[..]));
        assert_eq!(view.wanted_header(), Some(&b"dashboard"[..]));
        assert_eq!(view.header("user-agent"), Some(&b"curl"[..]));
        assert_eq!(view.header("x-missing"), None);
        assert_eq!(view.principal(), b"spiffe://cluster.local/ns/a/sa/app");
        assert_eq!(
            view.metadata_context(),
            request.attributes.and_then(|a| a.metadata_context)
        );
    }

    #[test]
    fn reads_raw_headers_from_the_header_map() {
        let header = |key: &str, value: &str, raw: &[u8]| HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: raw.to_vec(),
        };
        let request = full_request(attribute_context::HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            header_map: Some(HeaderMap {
                headers: vec![
                    header("x-subject", "", b"raw-subject"),
                    header("x-plain", "plain", b""),
                ],
            }),
            ..Default::default()
        });
        let bytes = request.encode_to_vec();
        let view = CheckRequestView::parse(&bytes, "x-subject").unwrap();
        assert_eq!(view.header("x-subject"), Some(&b"raw-subject"[..]));
        assert_eq!(view.wanted_header(), Some(&b"raw-subject"[..]));
        assert_eq!(view.header("x-plain"), Some(&b"plain"[..]));
        assert_eq!(view.header("x-other"), None);
    }

    #[test]
    fn repeated_headers_are_counted_in_both_encodings() {
        let header = |key: &str, raw: &[u8]| HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: raw.to_vec(),
        };
        let request = full_request(attribute_context::HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            header_map: Some(HeaderMap {
                headers: vec![
                    header("x-subject", b"first"),
                    header("x-other", b"o"),
                    header("x-subject", b"second"),
                ],
            }),
            ..Default::default()
        });
        let bytes = request.encode_to_vec();
        let view = CheckRequestView::parse(&bytes, "x-subject").unwrap();
        assert_eq!(view.wanted_header(), Some(&b"first"[..]));
        assert_eq!(view.wanted_header_count(), 2);
        let view = CheckRequestView::parse(&bytes, "x-other").unwrap();
        assert_eq!(view.wanted_header_count(), 1);

        // A map entry repeated on the wire inside one HttpRequest (Envoy never sends one; a
        // crafted request might): counted twice, although protobuf would keep the last.
        let http = attribute_context::HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            headers: [("x-subject".to_string(), "a".to_string())].into(),
            ..Default::default()
        }
        .encode_to_vec();
        let wrap = |field: u8, inner: &[u8]| {
            let mut out = vec![(field << 3) | 2];
            prost::encoding::encode_varint(inner.len() as u64, &mut out);
            out.extend_from_slice(inner);
            out
        };
        let check = |http: &[u8]| wrap(1, &wrap(4, &wrap(2, http)));
        let once = check(&http);
        let view = CheckRequestView::parse(&once, "x-subject").unwrap();
        assert_eq!(view.wanted_header_count(), 1);
        let twice = check(&[http.as_slice(), http.as_slice()].concat());
        let view = CheckRequestView::parse(&twice, "x-subject").unwrap();
        assert_eq!(view.wanted_header_count(), 2);
        assert_eq!(view.wanted_header(), Some(&b"a"[..]));
        let view = CheckRequestView::parse(&bytes, "x-missing").unwrap();
        assert_eq!(view.wanted_header_count(), 0);
    }

    #[test]
    fn a_request_without_http_has_no_method_path_or_headers() {
        let bytes = CheckRequest::default().encode_to_vec();
        let view = CheckRequestView::parse(&bytes, "x-subject").unwrap();
        assert_eq!(view.method_and_path(), None);
        assert_eq!(view.header("x-subject"), None);
        assert_eq!(view.principal(), b"");
        assert_eq!(view.metadata_context(), None);
    }

    #[test]
    fn malformed_messages_are_refused_not_misread() {
        let good = full_request(attribute_context::HttpRequest {
            method: "GET".into(),
            path: "/a".into(),
            ..Default::default()
        })
        .encode_to_vec();
        for cut in 1..good.len() {
            // Every prefix either parses (a cut on a field boundary of the outer message) or
            // is refused; none panics.
            let _ = CheckRequestView::parse(&good[..cut], "x-subject");
        }
        assert_eq!(
            CheckRequestView::parse(&good[..good.len() - 1], "x-subject"),
            Err(WireError::Truncated)
        );
        assert_eq!(
            CheckRequestView::parse(&[0x00], "x-subject"),
            Err(WireError::BadKey)
        );
        assert_eq!(
            CheckRequestView::parse(&[0x0b], "x-subject"),
            Err(WireError::BadKey)
        );
        let mut long_varint = vec![0x08];
        long_varint.extend([0x80; 11]);
        assert_eq!(
            CheckRequestView::parse(&long_varint, "x-subject"),
            Err(WireError::BadVarint)
        );
    }

    fn header_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec(("[a-z:-]{1,12}", "\\PC{0,16}"), 0..8)
    }

    proptest! {
        /// Whatever Envoy-shaped request prost encodes, the view reads what prost reads back.
        #[test]
        fn agrees_with_prost(
            method in "[A-Z]{0,7}",
            path in "\\PC{0,40}",
            headers in header_strategy(),
            principal in "\\PC{0,30}",
            lookup in "[a-z:-]{1,12}",
        ) {
            let mut request = full_request(attribute_context::HttpRequest {
                method: method.clone(),
                path: path.clone(),
                headers: headers.into_iter().collect(),
                ..Default::default()
            });
            if let Some(source) = request.attributes.as_mut().and_then(|a| a.source.as_mut()) {
                source.principal = principal.clone();
            }
            let bytes = request.encode_to_vec();
            let decoded = CheckRequest::decode(bytes.as_slice()).unwrap();
            let http = decoded.attributes.as_ref().and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref()).unwrap();
            let view = CheckRequestView::parse(&bytes, &lookup).unwrap();
            prop_assert_eq!(view.wanted_header(), http.headers.get(&lookup).map(|v| v.as_bytes()));
            prop_assert_eq!(view.method_and_path(), Some((http.method.as_str(), http.path.as_str())));
            prop_assert_eq!(view.header(&lookup), http.headers.get(&lookup).map(|v| v.as_bytes()));
            prop_assert_eq!(view.principal(), principal.as_bytes());
        }

        /// Arbitrary bytes never panic the reader.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(view) = CheckRequestView::parse(&bytes, "x-subject") {
                let _ = view.method_and_path();
                let _ = view.header("x-subject");
                let _ = view.metadata_context();
            }
        }
    }
}
