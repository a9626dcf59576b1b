//! Who a connection is: with `--jwt-secret`, an HS256 token's `sub`, checked before the
//! upgrade; without it, the `?user=` the client names (development and trusted networks).

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl JwtAuth {
    pub fn new(secret: &str) -> JwtAuth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        // A token not valid yet (`nbf` in the future) is refused like an expired one.
        validation.validate_nbf = true;
        JwtAuth {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The user a token names, or why it is refused.
    pub fn user(&self, token: &str) -> Result<String, String> {
        decode::<Claims>(token, &self.key, &self.validation)
            .map(|t| t.claims.sub)
            .map_err(|e| format!("invalid token: {e}"))
    }
}
