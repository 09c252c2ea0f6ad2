//! A synthetic but varied labelled task: customer support tickets routed to `billing`,
//! `technical`, `account` or `other`. Reproducible from a seed; a different seed gives a different
//! set (held-out data for evaluation).
//!
//! Variety, so that a model has to learn the task rather than a few strings: several phrasings of
//! each intent, product and detail slots, politeness and greetings, typos (swapped, dropped and
//! doubled letters), mixed signals (a side remark from another category; the label follows the
//! main request), and long rambling tickets with filler before and after the request.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The labels, in the order of `examples/tasks.toml`.
pub const LABELS: [&str; 4] = ["billing", "technical", "account", "other"];

/// One generated ticket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ticket {
    /// `t-<seed>-<n>`.
    pub id: String,
    /// The ticket text.
    pub text: String,
    /// Its label, one of [`LABELS`].
    pub label: &'static str,
}

const BILLING: &[&str] = &[
    "I was charged twice for my {plan} this month",
    "my card got billed {amount} but I cancelled last week",
    "can I get a refund for the {plan}",
    "the invoice for {month} shows the wrong amount",
    "why did the price of my {plan} go up",
    "there is a payment of {amount} on my statement I do not recognise",
    "please send me a receipt for my last payment",
    "I want to change the credit card you charge every month",
    "you billed me {amount} for a {plan} I never ordered",
    "how do I get the VAT invoice for {month}",
];

const TECHNICAL: &[&str] = &[
    "the app crashes when I open the {screen}",
    "I get error {code} every time I try to sync",
    "the {screen} is blank after the latest update",
    "uploads fail with a timeout on {device}",
    "the page keeps loading forever on {device}",
    "notifications stopped working on my {device}",
    "export to CSV produces an empty file",
    "the {screen} freezes and I have to restart the app",
    "after updating to version {version} nothing loads",
    "search returns error {code} for every query",
];

const ACCOUNT: &[&str] = &[
    "I forgot my password and the reset email never arrives",
    "please change the email address on my account",
    "how do I delete my account and all my data",
    "I am locked out after too many login attempts",
    "can you merge my two accounts",
    "I need to add a colleague as an admin to our account",
    "my username shows the wrong name, please update it",
    "two factor authentication codes are not accepted when I log in",
    "I want to transfer the account to my business partner",
    "someone else logged into my account, please secure it",
];

const OTHER: &[&str] = &[
    "do you have an office in {city}",
    "I just wanted to say your support team was great",
    "are you hiring for remote positions",
    "can you recommend a good book about productivity",
    "what are your opening hours during the holidays",
    "I would like to suggest a feature for the {screen}",
    "is there a student discount programme at your university events",
    "who should I contact for a press interview",
    "do you sponsor local events in {city}",
    "what is the weather like at your headquarters",
];

const SIDE: &[(&str, &str)] = &[
    ("billing", "I pay every month on time by the way"),
    (
        "technical",
        "the app was a bit slow yesterday too but that is not why I write",
    ),
    ("account", "I logged in fine this morning"),
    ("other", "I love the new logo"),
];

const GREETINGS: &[&str] = &[
    "Hi,",
    "Hello team,",
    "Dear support,",
    "Hey,",
    "Good morning,",
    "",
];
const CLOSINGS: &[&str] = &[
    "Thanks.",
    "Thank you!",
    "Regards, Sam",
    "Please help asap.",
    "Cheers",
    "",
];
const FILLER: &[&str] = &[
    "I have been a customer for about three years now",
    "I already tried to find the answer in your help centre",
    "my colleague told me to write to you",
    "this is the second time I am writing about this",
    "I am writing from my phone so sorry for typos",
    "we use the product every day in our small team",
    "it is quite urgent because we have a deadline on friday",
    "I hope this is the right place to ask",
];

const PLANS: &[&str] = &[
    "subscription",
    "pro plan",
    "team plan",
    "annual licence",
    "premium add-on",
];
const AMOUNTS: &[&str] = &[
    "$19.99",
    "49 euros",
    "$120",
    "twice the usual amount",
    "£35",
];
const MONTHS: &[&str] = &["March", "April", "last month", "January", "September"];
const SCREENS: &[&str] = &[
    "settings page",
    "dashboard",
    "calendar view",
    "reports tab",
    "inbox",
];
const DEVICES: &[&str] = &[
    "my iPhone",
    "Android",
    "the Windows app",
    "Chrome",
    "my tablet",
];
const CODES: &[&str] = &["500", "E42", "403", "0x80070005", "SYNC-17"];
const CITIES: &[&str] = &["Berlin", "Toronto", "Lagos", "Melbourne", "Osaka"];

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn fill(rng: &mut StdRng, template: &str) -> String {
    let mut s = template.to_string();
    for (slot, values) in [
        ("{plan}", PLANS),
        ("{amount}", AMOUNTS),
        ("{month}", MONTHS),
        ("{screen}", SCREENS),
        ("{device}", DEVICES),
        ("{code}", CODES),
        ("{city}", CITIES),
    ] {
        while s.contains(slot) {
            let v = pick(rng, values);
            s = s.replacen(slot, v, 1);
        }
    }
    if s.contains("{version}") {
        let v = format!("{}.{}", rng.random_range(1..9), rng.random_range(0..20));
        s = s.replace("{version}", &v);
    }
    s
}

/// Swaps, drops or doubles a letter in about `rate` of the words.
fn typos(rng: &mut StdRng, text: &str, rate: f64) -> String {
    text.split(' ')
        .map(|w| {
            let chars: Vec<char> = w.chars().collect();
            if chars.len() < 4 || !rng.random_bool(rate) {
                return w.to_string();
            }
            let i = rng.random_range(1..chars.len() - 1);
            let mut c = chars.clone();
            match rng.random_range(0..3) {
                0 => c.swap(i, i + 1),
                1 => {
                    c.remove(i);
                }
                _ => c.insert(i, chars[i]),
            }
            c.into_iter().collect()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn sentence(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => format!("{}{}.", f.to_uppercase(), c.as_str()),
        None => String::new(),
    }
}

/// `n` tickets from `seed`, labels in equal shares (shuffled).
pub fn generate(n: usize, seed: u64) -> Vec<Ticket> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let label = LABELS[rng.random_range(0..LABELS.len())];
            let pool = match label {
                "billing" => BILLING,
                "technical" => TECHNICAL,
                "account" => ACCOUNT,
                _ => OTHER,
            };
            let mut parts: Vec<String> = Vec::new();
            let greeting = pick(&mut rng, GREETINGS);
            if !greeting.is_empty() {
                parts.push(greeting.to_string());
            }
            // Long rambling tickets: filler before (and after) the request.
            let rambling = rng.random_bool(0.2);
            let before = if rambling {
                rng.random_range(2..5)
            } else {
                rng.random_range(0..2)
            };
            // Filler sentences, each used at most once per ticket.
            let mut fillers: Vec<&str> = FILLER.to_vec();
            let mut filler = |rng: &mut StdRng| {
                let i = rng.random_range(0..fillers.len());
                sentence(fillers.swap_remove(i))
            };
            for _ in 0..before {
                parts.push(filler(&mut rng));
            }
            let template = pick(&mut rng, pool);
            let request = fill(&mut rng, template);
            // Mixed signals: a remark from another category; the request decides the label.
            let side = SIDE[rng.random_range(0..SIDE.len())];
            let mixed = side.0 != label && rng.random_bool(0.25);
            let remark_first = rng.random_bool(0.5);
            if mixed && remark_first {
                parts.push(sentence(side.1));
            }
            parts.push(sentence(&request));
            if mixed && !remark_first {
                parts.push(sentence(side.1));
            }
            if rambling {
                for _ in 0..rng.random_range(1..4) {
                    parts.push(filler(&mut rng));
                }
            }
            let closing = pick(&mut rng, CLOSINGS);
            if !closing.is_empty() {
                parts.push(closing.to_string());
            }
            let mut text = parts.join(" ");
            if rng.random_bool(0.3) {
                text = typos(&mut rng, &text, 0.15);
            }
            if rng.random_bool(0.1) {
                text = text.to_lowercase();
            }
            Ticket {
                id: format!("t-{seed}-{i}"),
                text,
                label,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_from_the_seed_and_different_across_seeds() {
        assert_eq!(generate(50, 1), generate(50, 1));
        let a: Vec<String> = generate(50, 1).into_iter().map(|t| t.text).collect();
        let b: Vec<String> = generate(50, 2).into_iter().map(|t| t.text).collect();
        let same = a.iter().filter(|t| b.contains(t)).count();
        assert!(same < 5, "{same} identical texts across seeds");
    }

    #[test]
    fn varied_every_label_long_and_short_with_typos() {
        let t = generate(2000, 7);
        for l in LABELS {
            let n = t.iter().filter(|x| x.label == l).count();
            assert!((400..=600).contains(&n), "{l}: {n}");
        }
        let distinct: std::collections::HashSet<&str> = t.iter().map(|x| x.text.as_str()).collect();
        assert!(distinct.len() > 1900, "{} distinct of 2000", distinct.len());
        let words: Vec<usize> = t.iter().map(|x| x.text.split(' ').count()).collect();
        assert!(*words.iter().min().unwrap() < 12);
        assert!(*words.iter().max().unwrap() > 60, "rambling tickets");
        // Typos make words no source string has.
        let norm = |w: &str| {
            w.to_lowercase()
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_string()
        };
        let known: std::collections::HashSet<String> = [
            BILLING, TECHNICAL, ACCOUNT, OTHER, FILLER, GREETINGS, CLOSINGS, PLANS, AMOUNTS,
            MONTHS, SCREENS, DEVICES, CODES, CITIES,
        ]
        .iter()
        .flat_map(|xs| xs.iter())
        .chain(SIDE.iter().map(|s| &s.1))
        .flat_map(|s| s.split(' '))
        .map(norm)
        .collect();
        let misspelt = t
            .iter()
            .filter(|x| {
                x.text
                    .split(' ')
                    .map(norm)
                    .any(|w| !w.is_empty() && !w.contains('.') && !known.contains(&w))
            })
            .count();
        assert!(
            (200..1200).contains(&misspelt),
            "{misspelt} tickets with typos"
        );
        // Mixed signals: some tickets carry another category's remark.
        assert!(t
            .iter()
            .any(|x| x.label != "other" && x.text.contains("I love the new logo")));
    }
}
