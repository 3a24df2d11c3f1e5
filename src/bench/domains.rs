//! The XMPP and MUC domains a Jitsi deployment's web clients use, read from its `config.js`.
//!
//! Jitsi's web client takes them from `config.hosts.domain` and `config.hosts.muc`. The two
//! forms in use:
//! - jitsi-meet's own `config.js` (Debian's `/etc/jitsi/meet/<domain>-config.js`), an object
//!   literal: `hosts: { domain: 'meet.example.com', muc: 'conference.' + subdomain +
//!   'meet.example.com' }`, older installs with an SSI comment in the string instead;
//! - docker-jitsi-meet's generated one, assignments: `config.hosts.domain = 'meet.jitsi';
//!   config.hosts.muc = 'muc.' + subdomain + 'meet.jitsi';`.
//!
//! A value is the concatenation of its string literals: the variables in it (`subdomain`,
//! `subdir`) are empty for a room at the site's root, which is where the bench's rooms are.
//! Comments are skipped, so a commented-out `// domain: 'x'` does not count.

/// docker-jitsi-meet's domains, for a deployment whose `config.js` names none.
const DEFAULTS: (&str, &str) = ("meet.jitsi", "muc.meet.jitsi");

/// A domain a run used, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Domain {
    /// The domain.
    pub name: String,
    /// `"option"` (`--xmpp-domain`, `--muc-domain`), `"config.js"` (the first target's), or
    /// `"default"` (docker-jitsi-meet's, when `config.js` named none).
    pub from: &'static str,
}

/// The XMPP and MUC domains of a run: each as `given`, else as `config_js` names it, else
/// docker-jitsi-meet's.
pub fn resolve(given: [Option<&str>; 2], config_js: Option<&str>) -> [Domain; 2] {
    let (domain, muc) = config_js.map(read).unwrap_or_default();
    let pick = |given: Option<&str>, read: Option<String>, default: &str| match (given, read) {
        (Some(name), _) => Domain {
            name: name.to_owned(),
            from: "option",
        },
        (None, Some(name)) => Domain {
            name,
            from: "config.js",
        },
        (None, None) => Domain {
            name: default.to_owned(),
            from: "default",
        },
    };
    [
        pick(given[0], domain, DEFAULTS.0),
        pick(given[1], muc, DEFAULTS.1),
    ]
}

/// `hosts.domain` and `hosts.muc` of `config_js`, each if found.
pub fn read(config_js: &str) -> (Option<String>, Option<String>) {
    let tokens = tokens(config_js);
    (setting(&tokens, "domain"), setting(&tokens, "muc"))
}

#[derive(Debug, PartialEq)]
enum Token {
    Str(String),
    Word(String),
    Punct(char),
}

/// The tokens of a script: string literals, words (identifiers, numbers) and punctuation;
/// comments and white space dropped.
fn tokens(js: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = js.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                let mut text = String::new();
                while let Some(c2) = chars.next() {
                    match c2 {
                        '\\' => text.extend(chars.next()),
                        _ if c2 == c => break,
                        _ => text.push(c2),
                    }
                }
                out.push(Token::Str(text));
            }
            '/' if chars.peek() == Some(&'/') => {
                chars.by_ref().take_while(|&c2| c2 != '\n').for_each(drop);
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c2 in chars.by_ref() {
                    if last == '*' && c2 == '/' {
                        break;
                    }
                    last = c2;
                }
            }
            _ if c.is_alphanumeric() || c == '_' || c == '$' => {
                let mut word = String::from(c);
                while let Some(&c2) = chars.peek() {
                    if !(c2.is_alphanumeric() || c2 == '_' || c2 == '$') {
                        break;
                    }
                    word.push(c2);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
            _ if c.is_whitespace() => {}
            _ => out.push(Token::Punct(c)),
        }
    }
    out
}

/// The value of `hosts.<key>`: the last one set, as the script would leave it.
fn setting(tokens: &[Token], key: &str) -> Option<String> {
    let word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x == w);
    let punct = |t: &Token, p: char| matches!(t, Token::Punct(x) if *x == p);
    let mut found = None;
    for (i, t) in tokens.iter().enumerate() {
        if !word(t, "hosts") {
            continue;
        }
        let rest = &tokens[i + 1..];
        match rest {
            // `hosts.<key> = <expression>;`
            [dot, name, eq, value @ ..] if punct(dot, '.') && word(name, key) && punct(eq, '=') => {
                let end = (value.iter()).position(|t| punct(t, ';') || punct(t, '}'));
                found = concatenated(&value[..end.unwrap_or(value.len())]).or(found);
            }
            // `hosts: { ..., <key>: <expression>, ... }`
            [colon, open, body @ ..] if punct(colon, ':') && punct(open, '{') => {
                found = in_object(body, key).or(found);
            }
            _ => {}
        }
    }
    found
}

/// The value of `key` among the entries of an object literal's `body` (after its `{`).
fn in_object(body: &[Token], key: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut entry_start = true;
    for (i, t) in body.iter().enumerate() {
        match t {
            Token::Punct('{' | '(' | '[') => depth += 1,
            Token::Punct('}' | ')' | ']') if depth == 0 => return None,
            Token::Punct('}' | ')' | ']') => depth -= 1,
            Token::Punct(',') if depth == 0 => {
                entry_start = true;
                continue;
            }
            Token::Word(name) | Token::Str(name) if depth == 0 && entry_start && name == key => {
                if let [Token::Punct(':'), value @ ..] = &body[i + 1..] {
                    let end = value.iter().position(|t| {
                        matches!(t, Token::Punct(',' | '}')) // the entry ends at depth 0
                    });
                    return concatenated(&value[..end.unwrap_or(value.len())]);
                }
            }
            _ => {}
        }
        entry_start = false;
    }
    None
}

/// The string literals of an expression joined, SSI comments (`<!--# ... -->`, unprocessed)
/// and white space taken out; `None` when that leaves nothing.
fn concatenated(expression: &[Token]) -> Option<String> {
    let mut text = String::new();
    for t in expression {
        if let Token::Str(s) = t {
            text.push_str(s);
        }
    }
    while let Some(start) = text.find("<!--") {
        let end = text[start..]
            .find("-->")
            .map_or(text.len(), |e| start + e + 3);
        text.replace_range(start..end, "");
    }
    text.retain(|c| !c.is_whitespace());
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::read;

    fn pair(domain: &str, muc: &str) -> (Option<String>, Option<String>) {
        (Some(domain.to_owned()), Some(muc.to_owned()))
    }

    #[test]
    fn jitsi_meets_own_config_js() {
        let js = r#"
var subdir = '<!--# echo var="subdir" default="" -->';
var subdomain = '<!--# echo var="subdomain" default="" -->';
if (subdomain.startsWith('<!--')) { subdomain = ''; }
var config = {
    // Connection
    hosts: {
        // XMPP domain.
        domain: 'meet.example.com',

        // When using authentication, domain for guest users.
        // anonymousdomain: 'guest.example.com',
        // muc: 'not.this.one',

        // XMPP MUC domain. FIXME: use XEP-0030 to discover it.
        muc: 'conference.' + subdomain + 'meet.example.com',
    },
    bosh: 'https://meet.example.com/' + subdir + 'http-bind',
    websocket: 'wss://meet.example.com/' + subdir + 'xmpp-websocket',
};
"#;
        assert_eq!(
            read(js),
            pair("meet.example.com", "conference.meet.example.com")
        );
    }

    #[test]
    fn an_older_install_with_ssi_in_the_string() {
        let js = r#"var config = {
    hosts: {
        domain: 'meet.example.com',
        muc: 'conference.<!--# echo var="subdomain" default="" -->meet.example.com'
    },
    bosh: '//meet.example.com/http-bind'
};"#;
        assert_eq!(
            read(js),
            pair("meet.example.com", "conference.meet.example.com")
        );
    }

    #[test]
    fn docker_jitsi_meets_generated_config_js() {
        let js = r#"// Jitsi Meet configuration.
var config = {};
if (!config.hasOwnProperty('hosts')) config.hosts = {};
config.hosts.domain = 'meet.jitsi';
config.focusUserJid = 'focus@auth.meet.jitsi';
var subdir = '<!--# echo var="subdir" default="" -->';
var subdomain = "";
config.hosts.muc = 'muc.' + subdomain + 'meet.jitsi';
config.bosh = '/' + subdir + 'http-bind';
config.websocket = 'wss://meet.example.com/' + subdir + 'xmpp-websocket';
"#;
        assert_eq!(read(js), pair("meet.jitsi", "muc.meet.jitsi"));
    }

    #[test]
    fn options_come_first_then_config_js_then_the_defaults() {
        let js = "config.hosts.domain = 'meet.example.com';";
        let [domain, muc] = super::resolve([None, Some("conference.x")], Some(js));
        assert_eq!(
            (domain.name.as_str(), domain.from),
            ("meet.example.com", "config.js")
        );
        assert_eq!((muc.name.as_str(), muc.from), ("conference.x", "option"));
        let [domain, muc] = super::resolve([None, None], None);
        assert_eq!(
            (domain.name.as_str(), domain.from),
            ("meet.jitsi", "default")
        );
        assert_eq!((muc.name.as_str(), muc.from), ("muc.meet.jitsi", "default"));
    }

    #[test]
    fn nothing_found_is_none() {
        assert_eq!(read("var config = { room: 'x' };"), (None, None));
        assert_eq!(read("config.hosts = {};"), (None, None));
        assert_eq!(read("hosts: { domain: subdomain }"), (None, None));
        // Cut off mid-way: no panic.
        assert_eq!(
            read("var config = { hosts: { domain: 'a.b"),
            (Some("a.b".into()), None)
        );
        assert_eq!(read("hosts: { muc"), (None, None));
    }
}
