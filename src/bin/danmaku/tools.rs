//! Operator tools of the `danmaku` binary: `check` (the effective config,
//! validated and redacted), `token` (a viewer or moderator token) and `sign`
//! (a gift backend's v2 signature headers). None connects to anything; each
//! loads the config exactly as `serve` does (file, then environment).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use danmaku::auth::{moderator::valid_subject, sign_gift_request, unix_now, Authenticator};
use danmaku::config::{show, Config};

/// `danmaku token`: a token signed with this config's secrets.
#[derive(Args, Clone, Debug)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// The display name (viewer tokens).
    #[arg(long, required_unless_present = "moderator")]
    name: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_s: u64,
    /// VIP level (`vip` claim; viewer tokens).
    #[arg(long, conflicts_with = "moderator")]
    vip: Option<u32>,
    /// A moderator token (signed with the admin token) for `--rooms`.
    #[arg(long, requires = "rooms")]
    moderator: bool,
    /// Rooms a moderator token may act in, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "moderator")]
    rooms: Vec<String>,
}

/// `danmaku sign`: the headers of a v2-signed gift backend request.
#[derive(Args, Clone, Debug)]
pub struct SignArgs {
    /// The request path, without the query string (`/v1/rooms/r1/events`).
    #[arg(long)]
    path: String,
    /// The `Idempotency-Key` (empty for `events:batch`).
    #[arg(long)]
    key: String,
    /// The body: a file, or `-` for stdin.
    #[arg(long)]
    body: PathBuf,
    #[arg(long, default_value = "POST")]
    method: String,
    /// Unix seconds (default: now).
    #[arg(long)]
    timestamp: Option<u64>,
}

/// The effective configuration as TOML, secrets redacted.
pub fn check(
    config_file: Option<&std::path::Path>,
    env: Vec<(String, String)>,
) -> anyhow::Result<String> {
    let (config, table) = Config::load_effective(config_file, env)?;
    let mut out = String::from(
        "# The effective configuration (embedded defaults, file, environment), valid; \
         secrets redacted.\n",
    );
    if config.auth.uses_dev_jwt_secret() || config.auth.uses_dev_gift_secret() {
        out.push_str("# DEVELOPMENT SECRETS in use: tokens and gift signatures are forgeable.\n");
    }
    out.push('\n');
    out.push_str(&show::redacted_toml(&table));
    Ok(out)
}

pub fn token(config: &Config, args: &TokenArgs) -> anyhow::Result<String> {
    if !valid_subject(&args.sub) {
        bail!("--sub must be 1 to 64 bytes without control characters");
    }
    if args.moderator {
        if config.auth.admin_token.is_empty() {
            bail!(
                "moderator tokens are signed with the admin token: set auth.admin_token \
                 (DANMAKU_ADMIN_TOKEN)"
            );
        }
        let rooms: Vec<&str> = args
            .rooms
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
            .collect();
        if rooms.is_empty() {
            bail!("--moderator needs --rooms r1[,r2…]");
        }
        let moderators = danmaku::auth::moderator::Moderators::new(
            &config.auth.admin_token,
            config.auth.jwt_leeway_s,
        );
        return Ok(moderators.issue(&args.sub, &rooms, args.ttl_s));
    }
    let name = args.name.as_deref().unwrap_or_default();
    let auth = Authenticator::new(&config.auth);
    Ok(auth.issue_with_vip(&args.sub, name, args.ttl_s, args.vip))
}

pub fn sign(config: &Config, args: &SignArgs) -> anyhow::Result<String> {
    let body = if args.body.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading the body from stdin")?;
        body
    } else {
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?
    };
    if !args.path.starts_with('/') || args.path.contains('?') {
        bail!("--path is the request path without the query string, e.g. /v1/rooms/r1/events");
    }
    let secret = config
        .auth
        .gift_secrets
        .first()
        .context("no gift secret configured")?;
    let timestamp = args.timestamp.unwrap_or_else(unix_now).to_string();
    let method = args.method.to_ascii_uppercase();
    let signature = sign_gift_request(secret, &timestamp, &method, &args.path, &args.key, &body);
    let mut out = format!("X-Timestamp: {timestamp}\nX-Signature: {signature}\n");
    if !args.key.is_empty() {
        out.push_str(&format!("Idempotency-Key: {}\n", args.key));
    }
    Ok(out)
}
