//! What a token must carry to be accepted, and the flags that say it: the claim that holds
//! the user id and, when configured, the issuer and audience. The api, the gateways and
//! `cellportctl` share these flags, so that every process applies the same rules.

use clap::builder::NonEmptyStringValueParser;

use crate::JwtSecret;

/// The claim that holds the user id when none is configured.
pub const DEFAULT_USER_CLAIM: &str = "sub";

/// Claims Cellport reads for something else: none of them can hold the user id.
const RESERVED_CLAIMS: [&str; 7] = ["exp", "nbf", "iat", "iss", "aud", "role", "scope"];

/// The rules every token is verified against and every token Cellport mints follows.
/// The web app's access tokens put the user id in `userId` and carry `iss`
/// `cell-segmentation-api` and `aud` `cell-segmentation-app`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TokenRules {
    /// Claim that holds the user id (userId in the web app's access tokens)
    #[arg(
        long = "jwt-user-claim",
        value_name = "CLAIM",
        env = "CELLPORT_JWT_USER_CLAIM",
        default_value = DEFAULT_USER_CLAIM,
        value_parser = parse_user_claim
    )]
    pub user_claim: String,
    /// When set, a token must carry this iss claim (the web app signs cell-segmentation-api)
    #[arg(
        long = "jwt-issuer",
        env = "CELLPORT_JWT_ISSUER",
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub issuer: Option<String>,
    /// When set, a token must carry this aud claim (the web app signs cell-segmentation-app)
    #[arg(
        long = "jwt-audience",
        env = "CELLPORT_JWT_AUDIENCE",
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub audience: Option<String>,
}

impl Default for TokenRules {
    /// The user in `sub`, any issuer and audience.
    fn default() -> TokenRules {
        TokenRules {
            user_claim: DEFAULT_USER_CLAIM.to_owned(),
            issuer: None,
            audience: None,
        }
    }
}

fn parse_user_claim(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the user claim needs a name, e.g. sub or userId".to_owned());
    }
    if RESERVED_CLAIMS.contains(&name) {
        return Err(format!(
            "the {name} claim means something else and cannot hold the user id"
        ));
    }
    Ok(name.to_owned())
}

/// The token flags of a process that verifies tokens: the secret and the rules.
#[derive(Debug, Clone, clap::Args)]
pub struct JwtArgs {
    /// HS256 secret tokens are signed with, at least 32 bytes: the same for every service
    #[arg(long, env = "CELLPORT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: JwtSecret,
    #[command(flatten)]
    pub token_rules: TokenRules,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        rules: TokenRules,
    }

    fn parse(args: &[&str]) -> Result<TokenRules, String> {
        Flags::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map(|f| f.rules)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_are_sub_and_no_issuer_or_audience() {
        assert_eq!(parse(&[]).unwrap(), TokenRules::default());
    }

    #[test]
    fn the_web_apps_rules_parse() {
        assert_eq!(
            parse(&[
                "--jwt-user-claim",
                "userId",
                "--jwt-issuer",
                "cell-segmentation-api",
                "--jwt-audience",
                "cell-segmentation-app",
            ])
            .unwrap(),
            TokenRules {
                user_claim: "userId".into(),
                issuer: Some("cell-segmentation-api".into()),
                audience: Some("cell-segmentation-app".into()),
            }
        );
    }

    #[test]
    fn a_claim_that_means_something_else_or_an_empty_value_is_refused() {
        let refused = |args: &[&str], reason: &str| {
            let message = parse(args).unwrap_err();
            assert!(message.contains(reason), "{args:?}: {message}");
        };
        refused(
            &["--jwt-user-claim", "exp"],
            "the exp claim means something else",
        );
        refused(
            &["--jwt-user-claim", "role"],
            "the role claim means something else",
        );
        refused(&["--jwt-user-claim", ""], "the user claim needs a name");
        refused(&["--jwt-issuer", ""], "a value is required");
        refused(&["--jwt-audience", ""], "a value is required");
    }
}
