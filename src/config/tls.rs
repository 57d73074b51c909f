//! TLS on the TCP listeners: which files; [`TlsConfig`] is their content, read at start-up.

use std::path::PathBuf;

use clap::Args;

/// TLS flags.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Server certificate (PEM) for TLS on the TCP listeners.
    #[arg(long, env = "AUTHZ_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for TLS.
    #[arg(long, env = "AUTHZ_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates are required on the TCP listeners (mTLS).
    #[arg(long, env = "AUTHZ_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The TLS files, paired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
    /// Client CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// TLS material for the TCP listeners, read at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Server certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Server key, PEM.
    pub key_pem: Vec<u8>,
    /// Client CA, PEM; when set, clients must present a certificate it signed.
    pub client_ca_pem: Option<Vec<u8>>,
}

/// Pairs the TLS flags into `errors`; `None` without TLS.
pub fn parse(args: &TlsArgs, errors: &mut Vec<String>) -> Option<TlsFiles> {
    match (&args.tls_cert, &args.tls_key) {
        (None, None) => {
            if args.tls_client_ca.is_some() {
                errors.push("--tls-client-ca needs --tls-cert and --tls-key".into());
            }
            None
        }
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }),
        _ => {
            errors.push("--tls-cert and --tls-key go together".into());
            None
        }
    }
}
