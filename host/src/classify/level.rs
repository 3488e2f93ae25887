//! Classification levels, per-field data classes, and the error for parsing them.

use std::fmt;
use std::str::FromStr;

/// How sensitive a piece of data is: `public < internal < confidential < restricted`.
///
/// The order is the one policy compares against: a step cleared for `confidential` may see
/// `public`, `internal` and `confidential` data but nothing `restricted`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// May be published.
    #[default]
    Public,
    /// Business data with no personal or secret content.
    Internal,
    /// Personal contact data, financial data, confidential business data.
    Confidential,
    /// Identifiers, sensitive personal data and credentials.
    Restricted,
}

impl Classification {
    /// Every level, lowest first.
    pub const ALL: [Classification; 4] = [
        Classification::Public,
        Classification::Internal,
        Classification::Confidential,
        Classification::Restricted,
    ];

    /// The lowercase name used in config files and schemas.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Classification {
    type Err = ClassifyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or_else(|| ClassifyError::UnknownLevel(s.to_owned()))
    }
}

/// The class of one field, as written in a schema's `x-data-classification` (kebab-case strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataClass {
    /// Publishable data.
    Public,
    /// Ordinary business data.
    Internal,
    /// Confidential business data.
    Confidential,
    /// Restricted business data.
    Restricted,
    /// Identifies a person on its own: national id, passport, tax id, date of birth.
    PiiIdentifier,
    /// Reaches or locates a person: name, email, phone, postal address.
    PiiContact,
    /// Special-category personal data: health, religion, biometrics and the like.
    PiiSensitive,
    /// Card numbers, bank accounts, IBANs.
    Financial,
    /// Passwords, API keys, tokens.
    Credential,
}

impl DataClass {
    /// Every class, in declaration order.
    pub const ALL: [DataClass; 9] = [
        DataClass::Public,
        DataClass::Internal,
        DataClass::Confidential,
        DataClass::Restricted,
        DataClass::PiiIdentifier,
        DataClass::PiiContact,
        DataClass::PiiSensitive,
        DataClass::Financial,
        DataClass::Credential,
    ];

    /// The classification level data of this class carries.
    pub fn level(self) -> Classification {
        match self {
            DataClass::Public => Classification::Public,
            DataClass::Internal => Classification::Internal,
            DataClass::Confidential | DataClass::Financial | DataClass::PiiContact => {
                Classification::Confidential
            }
            DataClass::Restricted
            | DataClass::PiiIdentifier
            | DataClass::PiiSensitive
            | DataClass::Credential => Classification::Restricted,
        }
    }

    /// Whether data of this class is personal data (PII).
    pub fn is_pii(self) -> bool {
        matches!(
            self,
            DataClass::PiiIdentifier | DataClass::PiiContact | DataClass::PiiSensitive
        )
    }

    /// The kebab-case name used in `x-data-classification`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Public => "public",
            DataClass::Internal => "internal",
            DataClass::Confidential => "confidential",
            DataClass::Restricted => "restricted",
            DataClass::PiiIdentifier => "pii-identifier",
            DataClass::PiiContact => "pii-contact",
            DataClass::PiiSensitive => "pii-sensitive",
            DataClass::Financial => "financial",
            DataClass::Credential => "credential",
        }
    }
}

impl fmt::Display for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataClass {
    type Err = ClassifyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|class| class.as_str() == s)
            .ok_or_else(|| ClassifyError::UnknownClass(s.to_owned()))
    }
}

/// Why a level, a data class or a schema's classification annotations could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClassifyError {
    /// A classification level name that is not one of the four levels.
    #[error(
        "unknown classification level `{0}` (expected public, internal, confidential or restricted)"
    )]
    UnknownLevel(String),
    /// A data class name that is not one of the nine classes.
    #[error(
        "unknown data class `{0}` (expected public, internal, confidential, restricted, \
         pii-identifier, pii-contact, pii-sensitive, financial or credential)"
    )]
    UnknownClass(String),
    /// A schema property whose classification annotations are malformed.
    #[error("schema property `{property}`: {problem}")]
    InvalidSchema {
        /// The property (field) name the problem is on.
        property: String,
        /// What is wrong with it.
        problem: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_from_public_to_restricted() {
        assert!(Classification::Public < Classification::Internal);
        assert!(Classification::Internal < Classification::Confidential);
        assert!(Classification::Confidential < Classification::Restricted);
        assert_eq!(Classification::default(), Classification::Public);
    }

    #[test]
    fn level_names_round_trip_through_display_fromstr_and_serde() {
        for level in Classification::ALL {
            let name = level.to_string();
            assert_eq!(name.parse::<Classification>(), Ok(level));
            assert_eq!(serde_json::to_value(level).unwrap(), name.as_str());
            let back: Classification = serde_json::from_value(name.clone().into()).unwrap();
            assert_eq!(back, level);
        }
    }

    #[test]
    fn unknown_level_is_an_error_naming_it() {
        let err = "secret".parse::<Classification>().unwrap_err();
        assert_eq!(err, ClassifyError::UnknownLevel("secret".into()));
        assert!(err.to_string().contains("`secret`"));
        assert!("Public".parse::<Classification>().is_err());
    }

    #[test]
    fn class_names_round_trip_through_display_fromstr_and_serde() {
        for class in DataClass::ALL {
            let name = class.to_string();
            assert_eq!(name.parse::<DataClass>(), Ok(class));
            assert_eq!(serde_json::to_value(class).unwrap(), name.as_str());
            let back: DataClass = serde_json::from_value(name.clone().into()).unwrap();
            assert_eq!(back, class);
        }
        assert_eq!(DataClass::PiiContact.to_string(), "pii-contact");
    }

    #[test]
    fn unknown_class_error_lists_the_valid_classes() {
        let err = "pii".parse::<DataClass>().unwrap_err();
        assert_eq!(err, ClassifyError::UnknownClass("pii".into()));
        let message = err.to_string();
        for class in DataClass::ALL {
            assert!(message.contains(class.as_str()), "{message}");
        }
    }

    #[test]
    fn class_levels_follow_the_table() {
        use Classification as L;
        use DataClass as C;
        let expected = [
            (C::Public, L::Public),
            (C::Internal, L::Internal),
            (C::Confidential, L::Confidential),
            (C::Financial, L::Confidential),
            (C::PiiContact, L::Confidential),
            (C::Restricted, L::Restricted),
            (C::PiiIdentifier, L::Restricted),
            (C::PiiSensitive, L::Restricted),
            (C::Credential, L::Restricted),
        ];
        for (class, level) in expected {
            assert_eq!(class.level(), level, "{class}");
        }
    }

    #[test]
    fn only_the_three_pii_classes_are_pii() {
        let pii: Vec<_> = DataClass::ALL.into_iter().filter(|c| c.is_pii()).collect();
        assert_eq!(
            pii,
            [
                DataClass::PiiIdentifier,
                DataClass::PiiContact,
                DataClass::PiiSensitive
            ]
        );
    }
}
