use std::collections::HashMap;
use std::time::Duration;

use clap::error::ErrorKind;

use super::*;
use crate::startup;

/// The command line `authz-sidecar ARGS` with exactly the variables `env` (not the process's).
fn cli(args: &[&str], env: &[(&str, &str)]) -> Cli {
    try_cli(args, env).expect("parses")
}

fn try_cli(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, clap::Error> {
    let env: HashMap<&str, &str> = env.iter().copied().collect();
    let argv = std::iter::once("authz-sidecar").chain(args.iter().copied());
    parse_cli(argv, &env)
}

/// Parsing alone: the settings and their problems.
fn settings(args: &[&str], env: &[(&str, &str)]) -> (Settings, Vec<String>) {
    let mut errors = Vec::new();
    let map: HashMap<&str, &str> = env.iter().copied().collect();
    let settings = cli(args, env).serve.settings(&map, &mut errors);
    (settings, errors)
}

fn errors(args: &[&str]) -> Vec<String> {
    settings(args, &[]).1
}

/// Parsing and start-up, as the binary does them.
fn load(args: &[&str], env: &[(&str, &str)]) -> Result<startup::Config, Vec<String>> {
    let (settings, mut errors) = settings(args, env);
    startup::load(settings, &mut errors).ok_or(errors)
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let errs = load(
        &[
            "--listen",
            "nowhere",
            "--log-format",
            "xml",
            "--data-dir",
            file.to_str().expect("utf8"),
            "--policy",
            "/nonexistent/policy.yaml",
        ],
        &[],
    )
    .expect_err("invalid");
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs[0].contains("--listen"));
    assert_eq!(
        errs[1],
        "--log-format / AUTHZ_LOG_FORMAT: `xml` is not `plain` or `json`"
    );
    assert!(errs[2].contains("--data-dir"));
    // A bad policy file is not a configuration error: start-up decides against the data
    // dir (the stored policy serves; an empty data dir refuses).
    let config = load(
        &[
            "--data-dir",
            dir.path().to_str().expect("utf8"),
            "--policy",
            "/nonexistent/policy.yaml",
        ],
        &[],
    )
    .expect("valid configuration");
    let problem = config.seed_error.expect("the file is refused").to_string();
    assert!(problem.contains("/nonexistent/policy.yaml"), "{problem}");
}

#[test]
fn parsing_touches_no_file_and_start_up_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let missing = dir.path().join("missing");
    let missing = missing.to_str().expect("utf8");
    let args = [
        "--data-dir",
        data.to_str().expect("utf8"),
        "--admin-token-file",
        missing,
        "--tls-cert",
        missing,
        "--tls-key",
        missing,
    ];
    let (settings, errs) = settings(&args, &[]);
    assert!(errs.is_empty(), "{errs:#?}");
    assert!(!data.exists(), "parsing created the data dir");
    let errs = load(&args, &[]).expect_err("the files are missing");
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs[0].starts_with("--admin-token-file / AUTHZ_ADMIN_TOKEN_FILE: cannot read"));
    assert!(errs[1].starts_with("--tls-cert / AUTHZ_TLS_CERT: cannot read"));
    assert!(errs[2].starts_with("--tls-key / AUTHZ_TLS_KEY: cannot read"));
    assert!(data.is_dir(), "start-up creates the data dir");
    assert_eq!(settings.store.data_dir, data);
}

#[test]
fn defaults_serve_the_built_in_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = load(
        &["--data-dir", data.to_str().expect("utf8")],
        &[(ENV_ADMIN_TOKEN, " tok\n")],
    )
    .expect("valid");
    assert_eq!(
        config.listeners.listen,
        Some(DEFAULT_LISTEN.parse().expect("addr"))
    );
    assert_eq!(config.seed_source, "built-in example");
    assert_eq!(config.admin_token.as_deref(), Some("tok"));
    assert_eq!(config.worker_threads, None, "one worker per available CPU");
    assert_eq!(
        config.store.reload_interval, None,
        "the built-in example never changes"
    );
    assert!(data.is_dir());
}

/// Each setting: a flag wins over its variable, which wins over the default. The
/// environment is a map here, so the test fails if either order is reversed.
#[test]
fn a_flag_wins_over_its_variable_which_wins_over_the_default() {
    let env = [
        (ENV_LISTEN, "127.0.0.1:7001"),
        ("AUTHZ_MAX_CONNECTIONS", "64"),
        ("AUTHZ_ENVOY_HIDE_REASON", "true"),
        ("AUTHZ_ENVOY_MODE", "shadow"),
        (ENV_LOG_FORMAT, "json"),
        (ENV_DATA_DIR, "/from/env"),
    ];
    let (defaults, errs) = settings(&[], &[]);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(
        defaults.listeners.listen,
        Some(DEFAULT_LISTEN.parse().expect("addr"))
    );
    assert_eq!(defaults.limits, Limits::default());
    assert!(!defaults.envoy.hide_reason);
    assert_eq!(defaults.envoy, EnvoyConfig::default());
    assert_eq!(defaults.log.format, LogFormat::Plain);
    assert_eq!(
        defaults.store.data_dir,
        std::path::Path::new(DEFAULT_DATA_DIR)
    );

    let (from_env, errs) = settings(&[], &env);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(
        from_env.listeners.listen,
        Some("127.0.0.1:7001".parse().expect("addr"))
    );
    assert_eq!(from_env.limits.max_connections, 64);
    assert!(from_env.envoy.hide_reason);
    assert_eq!(from_env.envoy.mode, EnvoyMode::Shadow);
    assert_eq!(from_env.log.format, LogFormat::Json);
    assert_eq!(from_env.store.data_dir, std::path::Path::new("/from/env"));

    let (from_flags, errs) = settings(
        &[
            "--listen",
            "127.0.0.1:7002",
            "--max-connections",
            "32",
            "--envoy-mode",
            "off",
            "--log-format",
            "plain",
            "--data-dir",
            "/from/flag",
        ],
        &env,
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(
        from_flags.listeners.listen,
        Some("127.0.0.1:7002".parse().expect("addr"))
    );
    assert_eq!(from_flags.limits.max_connections, 32);
    assert_eq!(from_flags.envoy.mode, EnvoyMode::Off);
    assert_eq!(from_flags.log.format, LogFormat::Plain);
    assert_eq!(
        from_flags.store.data_dir,
        std::path::Path::new("/from/flag")
    );
    // A variable without its flag on the command line still counts.
    assert!(from_flags.envoy.hide_reason);
}

#[test]
fn subcommands_read_the_same_environment() {
    let parsed = cli(&["validate", "p.yaml"], &[(ENV_MAX_POLICY_BYTES, "8192")]);
    match parsed.command {
        Some(Command::Validate {
            max_policy_bytes, ..
        }) => assert_eq!(max_policy_bytes, 8192),
        other => panic!("{other:?}"),
    }
    let parsed = cli(
        &["import", "--source", "embedded", "p.yaml"],
        &[("AUTHZ_SOURCE", "etcd"), (ENV_DATA_DIR, "/env/data")],
    );
    match parsed.command {
        Some(Command::Import {
            source, data_dir, ..
        }) => {
            assert_eq!(source, "embedded");
            assert_eq!(data_dir, std::path::Path::new("/env/data"));
        }
        other => panic!("{other:?}"),
    }
}

/// A variable goes through the flag's parser: the same refusal as the flag's.
#[test]
fn a_bad_variable_is_refused_as_the_flag_would_be() {
    let from_env = try_cli(&[], &[("AUTHZ_MAX_CONNECTIONS", "many")]).expect_err("not a number");
    let from_flag = try_cli(&["--max-connections", "many"], &[]).expect_err("not a number");
    assert_eq!(from_env.kind(), ErrorKind::ValueValidation);
    assert_eq!(from_env.to_string(), from_flag.to_string());
    assert!(
        from_env
            .to_string()
            .contains("invalid value 'many' for '--max-connections <MAX_CONNECTIONS>'"),
        "{from_env}"
    );
}

#[test]
fn help_names_each_variable() {
    let help = try_cli(&["--help"], &[]).expect_err("help");
    assert_eq!(help.kind(), ErrorKind::DisplayHelp);
    let text = help.to_string();
    for name in [
        ENV_LISTEN,
        ENV_DATA_DIR,
        "AUTHZ_ENVOY_MODE",
        "AUTHZ_ETCD_ENDPOINTS",
    ] {
        assert!(text.contains(&format!("[env: {name}")), "{name}: {text}");
    }
    assert!(text.contains("[default: 127.0.0.1:50051]"), "{text}");
}

#[test]
fn keyword_flags_name_every_accepted_word() {
    assert_eq!(names::<EnvoyMode>(), "`enforce`, `shadow` or `off`");
    assert_eq!(names::<AdminExposure>(), "`on`, `uds` or `off`");
    assert_eq!(names::<SubjectSource>(), "`header`, `jwt` or `spiffe`");
    assert_eq!(names::<Source>(), "`embedded` or `etcd`");
    let errs = errors(&[
        "--admin",
        "UDS",
        "--envoy-mode",
        "audit",
        "--envoy-subject-source",
        "cookie",
        "--http-encoded-slashes",
        "sometimes",
    ]);
    assert_eq!(
        errs,
        [
            "--admin / AUTHZ_ADMIN: `UDS` is not `on`, `uds` or `off`",
            "--http-encoded-slashes / AUTHZ_HTTP_ENCODED_SLASHES: `sometimes` is not `refuse` or `data`",
            "--envoy-mode / AUTHZ_ENVOY_MODE: `audit` is not `enforce`, `shadow` or `off`",
            "--envoy-subject-source / AUTHZ_ENVOY_SUBJECT_SOURCE: `cookie` is not `header`, `jwt` or `spiffe`",
        ]
    );
    let (settings, errs) = settings(&["--admin", "uds", "--uds", "/tmp/a.sock"], &[]);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(settings.admin.exposure, AdminExposure::UdsOnly);
}

#[test]
fn header_names_are_http_tokens_kept_in_lower_case() {
    let (settings, errs) = settings(&["--envoy-subject-header", "X-User-Id"], &[]);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(settings.envoy.subject_header, "x-user-id");
    for bad in ["", "x subject", "x-subject:", "x\u{e9}", "x\"y"] {
        let errs = errors(&["--envoy-revision-header", bad]);
        assert_eq!(
            errs,
            [format!(
                "--envoy-revision-header: `{bad}` is not a valid HTTP header name"
            )],
            "{bad:?}"
        );
    }
}

#[test]
fn the_ext_authz_message_limit_and_owned_header_names_are_checked() {
    let (settings, errs) = settings(&[], &[]);
    assert!(errs.is_empty());
    assert_eq!(settings.envoy.max_message_bytes, 1024 * 1024);
    let (settings, errs) = self::settings(&["--envoy-max-message-bytes", "2097152"], &[]);
    assert!(errs.is_empty());
    assert_eq!(settings.envoy.max_message_bytes, 2 * 1024 * 1024);
    let errs = errors(&[
        "--envoy-max-message-bytes",
        "10",
        "--envoy-subject-upstream-header",
        "X-Subject",
    ]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].contains("--envoy-max-message-bytes"), "{errs:#?}");
    assert!(
        errs[1].contains(
            "--envoy-subject-upstream-header and --envoy-subject-header both name `x-subject`"
        ),
        "{errs:#?}"
    );
}

#[test]
fn connection_limits_have_pod_sized_defaults_and_are_checked() {
    let (settings, _) = settings(&[], &[]);
    assert_eq!(settings.limits, Limits::default());
    assert_eq!(settings.limits.max_connections, 1024);
    assert_eq!(settings.limits.handshake_timeout, Duration::from_secs(5));
    assert_eq!(settings.limits.idle_timeout, Some(Duration::from_secs(600)));
    let (settings, errs) = self::settings(
        &[
            "--max-connections",
            "64",
            "--handshake-timeout-ms",
            "250",
            "--idle-timeout",
            "0",
        ],
        &[],
    );
    assert!(errs.is_empty());
    assert_eq!(settings.limits.max_connections, 64);
    assert_eq!(
        settings.limits.handshake_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(settings.limits.idle_timeout, None, "0 = never");
    let errs = errors(&["--max-connections", "0", "--handshake-timeout-ms", "0"]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].contains("AUTHZ_MAX_CONNECTIONS"), "{errs:#?}");
    assert!(errs[1].contains("AUTHZ_HANDSHAKE_TIMEOUT_MS"), "{errs:#?}");
}

#[test]
fn worker_threads_are_bounded() {
    let (settings, _) = settings(&["--worker-threads", "1"], &[]);
    assert_eq!(settings.worker_threads, Some(1));
    assert_eq!(
        errors(&["--worker-threads", "4096"]),
        ["--worker-threads 4096: at most 1024"]
    );
}

#[test]
fn fleet_flags_are_validated_together() {
    let errs = errors(&[
        "--source",
        "etcd",
        "--etcd-endpoints",
        "etcd:2379,https://etcd-1:2379",
        "--etcd-prefix",
        "/authz",
        "--etcd-username",
        "sidecar",
    ]);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs[0].contains("`etcd:2379`"));
    assert!(errs[1].contains("--etcd-ca"));
    assert!(errs[2].contains("--etcd-prefix"));
    assert!(errs[3].contains("--etcd-password-file"));
    assert_eq!(
        errors(&["--source", "cloud"]),
        ["--source / AUTHZ_SOURCE: `cloud` is not `embedded` or `etcd`"]
    );
    let (settings, errs) = settings(
        &[
            "--source",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:2379, http://127.0.0.1:22379",
            "--max-staleness",
            "30",
            "--policy-reload-interval",
            "5",
        ],
        &[],
    );
    assert!(errs.is_empty(), "{errs:#?}");
    let fleet = settings.fleet.expect("fleet mode");
    assert_eq!(fleet.etcd.endpoints.len(), 2);
    assert_eq!(fleet.etcd.prefix, "/authz/");
    assert_eq!(fleet.max_staleness, Some(Duration::from_secs(30)));
    assert_eq!(settings.store.reload_interval, None, "a fleet follows etcd");
    assert!(self::settings(&[], &[]).0.fleet.is_none());
    let errs = errors(&[
        "--source",
        "etcd",
        "--etcd-endpoints",
        "http://e:2379",
        "--policy",
        "p.yaml",
    ]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("--policy / AUTHZ_POLICY: does not apply with --source etcd"));
}

#[test]
fn the_admin_token_comes_from_one_place_and_is_not_the_placeholder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf8");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-file\n").expect("write");
    let token_file = token_file.to_str().expect("utf8");
    let config = load(&["--data-dir", data, "--admin-token-file", token_file], &[]).expect("valid");
    assert_eq!(config.admin_token.as_deref(), Some("from-file"));
    let errs = load(
        &["--data-dir", data, "--admin-token-file", token_file],
        &[(ENV_ADMIN_TOKEN, "from-env")],
    )
    .expect_err("both");
    assert_eq!(
        errs,
        ["both AUTHZ_ADMIN_TOKEN and --admin-token-file / AUTHZ_ADMIN_TOKEN_FILE are set; set one"]
    );
    let (_, errs) = settings(&[], &[(ENV_ADMIN_TOKEN, PLACEHOLDER_ADMIN_TOKEN)]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("AUTHZ_ADMIN_TOKEN: the token is the placeholder"));
    // A blank variable is no token.
    let config = load(&["--data-dir", data], &[(ENV_ADMIN_TOKEN, "  ")]).expect("valid");
    assert_eq!(config.admin_token, None);
}

/// A variable is a value, never more command line: one that looks like a flag stays text.
#[test]
fn a_variable_cannot_smuggle_in_a_flag() {
    let (settings, errs) = settings(
        &[],
        &[
            (ENV_DATA_DIR, "--admin-listen=0.0.0.0:1"),
            ("AUTHZ_ETCD_USERNAME", "u --source etcd"),
        ],
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(
        settings.store.data_dir,
        std::path::Path::new("--admin-listen=0.0.0.0:1")
    );
    assert_eq!(settings.admin.listen, None);
    assert!(settings.fleet.is_none());
}

#[test]
fn etcd_files_are_read_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf8");
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").expect("write");
    let password = password.to_str().expect("utf8");
    let args = [
        "--data-dir",
        data,
        "--source",
        "etcd",
        "--etcd-endpoints",
        "http://127.0.0.1:2379",
        "--etcd-username",
        "sidecar",
        "--etcd-password-file",
        password,
    ];
    let config = load(&args, &[]).expect("valid");
    let fleet = config.fleet.expect("fleet mode");
    assert_eq!(
        fleet.etcd.credentials,
        Some(("sidecar".to_owned(), "s3cret".to_owned()))
    );
    std::fs::write(password, [0xff, 0xfe]).expect("write");
    assert_eq!(
        load(&args, &[]).expect_err("not UTF-8"),
        ["--etcd-password-file / AUTHZ_ETCD_PASSWORD_FILE: not UTF-8"]
    );
}
