//! Data classes guessed from well-known field names.

use super::DataClass;

/// How a table entry may match a field name.
#[derive(Clone, Copy)]
enum Fit {
    /// The entry may be the trailing words of the name: `customer_email` fits `email`.
    Suffix,
    /// The entry must be the whole name. Used for `name`, which as a suffix would make
    /// `product_name` or `file_name` personal data.
    Whole,
}

/// Well-known field names, written without separators and lowercase.
const NAMES: &[(&str, Fit, DataClass)] = {
    use DataClass::PiiIdentifier as Ident;
    use DataClass::{Credential as Cred, Financial as Fin, PiiContact as Contact};
    use Fit::{Suffix as S, Whole as W};
    &[
        ("email", S, Contact),
        ("phone", S, Contact),
        ("phonenumber", S, Contact),
        ("mobile", S, Contact),
        ("mobilenumber", S, Contact),
        ("telephone", S, Contact),
        ("name", W, Contact),
        ("firstname", S, Contact),
        ("lastname", S, Contact),
        ("fullname", S, Contact),
        ("middlename", S, Contact),
        ("givenname", S, Contact),
        ("familyname", S, Contact),
        ("surname", S, Contact),
        ("customername", S, Contact),
        ("contactname", S, Contact),
        ("displayname", S, Contact),
        ("holdername", S, Contact),
        ("username", S, Contact),
        ("address", S, Contact),
        ("street", S, Contact),
        ("postcode", S, Contact),
        ("postalcode", S, Contact),
        ("zip", S, Contact),
        ("zipcode", S, Contact),
        ("ssn", S, Ident),
        ("socialsecurity", S, Ident),
        ("socialsecuritynumber", S, Ident),
        ("passport", S, Ident),
        ("passportnumber", S, Ident),
        ("nationalid", S, Ident),
        ("taxid", S, Ident),
        ("dateofbirth", S, Ident),
        ("birthdate", S, Ident),
        ("dob", S, Ident),
        ("cardnumber", S, Fin),
        ("pan", S, Fin),
        ("iban", S, Fin),
        ("accountnumber", S, Fin),
        ("password", S, Cred),
        ("secret", S, Cred),
        ("apikey", S, Cred),
        ("privatekey", S, Cred),
        ("token", S, Cred),
    ]
};

/// The data class a well-known field name implies, if any.
///
/// Matching is case-insensitive and ignores `_`, `-`, `.` and spaces, so `first_name`,
/// `firstName`, `FIRST-NAME` and `firstname` are the same name. A known name may also be
/// the trailing words of a longer one (`customer_email`, `billingZip`, `x-api-key`), but only
/// on a word boundary (`timespan` is not `pan`), and a bare `name` only matches on its own.
///
/// | names | class |
/// |---|---|
/// | email, phone, mobile, telephone, name, first/last/full name, address, street, postcode, zip | `pii-contact` |
/// | ssn, social_security, passport, national_id, tax_id, date_of_birth, dob | `pii-identifier` |
/// | card_number, pan, iban, account_number | `financial` |
/// | password, secret, api_key, private_key, token | `credential` |
pub fn class_for_name(name: &str) -> Option<DataClass> {
    let (joined, word_starts) = split_words(name);
    word_starts.iter().find_map(|&start| {
        let tail = &joined[start..];
        NAMES.iter().find_map(|&(known, fit, class)| {
            let fits = match fit {
                Fit::Suffix => true,
                Fit::Whole => start == 0,
            };
            (fits && known == tail).then_some(class)
        })
    })
}

/// The name lowercased with separators removed, and the byte offset where each word starts.
/// Words break at `_`, `-`, `.`, spaces and lower-to-upper case changes (`customerEmail`).
fn split_words(name: &str) -> (String, Vec<usize>) {
    let mut joined = String::with_capacity(name.len());
    let mut starts = Vec::new();
    let mut at_break = true;
    let mut after_lower = false;
    for c in name.chars() {
        if matches!(c, '_' | '-' | '.' | ' ') {
            at_break = true;
            after_lower = false;
            continue;
        }
        if at_break || (c.is_uppercase() && after_lower) {
            starts.push(joined.len());
        }
        at_break = false;
        after_lower = c.is_lowercase() || c.is_ascii_digit();
        joined.extend(c.to_lowercase());
    }
    (joined, starts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataClass::*;

    #[test]
    fn well_known_names_map_to_their_class() {
        let cases = [
            ("email", PiiContact),
            ("phone", PiiContact),
            ("mobile", PiiContact),
            ("telephone", PiiContact),
            ("first_name", PiiContact),
            ("last_name", PiiContact),
            ("full_name", PiiContact),
            ("name", PiiContact),
            ("address", PiiContact),
            ("street", PiiContact),
            ("postcode", PiiContact),
            ("zip", PiiContact),
            ("ssn", PiiIdentifier),
            ("social_security", PiiIdentifier),
            ("passport", PiiIdentifier),
            ("national_id", PiiIdentifier),
            ("tax_id", PiiIdentifier),
            ("date_of_birth", PiiIdentifier),
            ("dob", PiiIdentifier),
            ("card_number", Financial),
            ("pan", Financial),
            ("iban", Financial),
            ("account_number", Financial),
            ("password", Credential),
            ("secret", Credential),
            ("api_key", Credential),
            ("token", Credential),
        ];
        for (name, class) in cases {
            assert_eq!(class_for_name(name), Some(class), "{name}");
        }
    }

    #[test]
    fn case_and_separators_do_not_matter() {
        for name in [
            "FirstName",
            "first-name",
            "FIRST_NAME",
            "firstname",
            "first.name",
        ] {
            assert_eq!(class_for_name(name), Some(PiiContact), "{name}");
        }
        assert_eq!(class_for_name("dateOfBirth"), Some(PiiIdentifier));
        assert_eq!(class_for_name("APIKey"), Some(Credential));
        assert_eq!(class_for_name("apiKey"), Some(Credential));
    }

    #[test]
    fn trailing_words_match() {
        assert_eq!(class_for_name("customer_email"), Some(PiiContact));
        assert_eq!(class_for_name("customerEmail"), Some(PiiContact));
        assert_eq!(class_for_name("billing-zip"), Some(PiiContact));
        assert_eq!(class_for_name("email_address"), Some(PiiContact));
        assert_eq!(class_for_name("customer_ssn"), Some(PiiIdentifier));
        assert_eq!(class_for_name("x-api-key"), Some(Credential));
        assert_eq!(class_for_name("refresh_token"), Some(Credential));
        assert_eq!(class_for_name("payout_iban"), Some(Financial));
        assert_eq!(class_for_name("customer_first_name"), Some(PiiContact));
    }

    #[test]
    fn partial_words_and_generic_names_do_not_match() {
        for name in [
            "timespan",
            "gzip",
            "filename",
            "product_name",
            "step-name",
            "emails_sent_count",
            "email_verified",
            "max_tokens",
            "amount",
            "order_id",
            "",
            "_-_",
        ] {
            assert_eq!(class_for_name(name), None, "{name}");
        }
    }

    #[test]
    fn non_ascii_names_do_not_panic() {
        assert_eq!(class_for_name("ÉMAIL"), None);
        assert_eq!(class_for_name("kunde_Email"), Some(PiiContact));
        assert_eq!(class_for_name("İstanbul_phone"), Some(PiiContact));
    }
}
