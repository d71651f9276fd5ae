//! A small template language for the write-up, so that its prose lives in one Markdown file
//! (`writeup.md`) and the code only fills in what was measured.
//!
//! - `{{name}}` is replaced by the text of `name`.
//! - `{{#name}} ... {{/name}}` renders its body once per context of the list `name`, each
//!   time with that context's names in scope: an absent result is an empty list and its
//!   section is left out; a present one is a list of one.
//! - `{{^name}} ... {{/name}}` renders its body only when the list `name` is empty.
//! - A section tag alone on its line takes the whole line with it, newline included.
//!
//! Names are looked up from the innermost section outwards. An unknown name, a text used as a
//! list (or the reverse) and an unclosed or stray tag are errors that name the tag: never an
//! empty string in the output.

use std::collections::BTreeMap;

/// The values a template is rendered with.
/// Serialisable, so that an experiment unit can store its section of the write-up.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Context {
    values: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Value {
    Text(String),
    List(Vec<Context>),
}

impl Context {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `{{name}}`.
    pub fn text(mut self, name: &'static str, value: impl std::fmt::Display) -> Self {
        self.values
            .insert(name.to_string(), Value::Text(value.to_string()));
        self
    }

    /// Sets the list `{{#name}}` iterates over.
    pub fn list(mut self, name: &'static str, items: Vec<Context>) -> Self {
        self.values.insert(name.to_string(), Value::List(items));
        self
    }

    /// A section shown once with `item`'s names, or left out when `item` is `None`.
    pub fn section(self, name: &'static str, item: Option<Context>) -> Self {
        self.list(name, item.into_iter().collect())
    }

    /// [`Context::section`] under a name made at run time.
    pub fn section_named(mut self, name: String, item: Option<Context>) -> Self {
        self.values.insert(name, Value::List(item.into_iter().collect()));
        self
    }

    /// The items of the list `name` (none when it is absent or a text).
    pub fn items(&self, name: &str) -> &[Context] {
        match self.values.get(name) {
            Some(Value::List(items)) => items,
            _ => &[],
        }
    }

    /// A section shown (with no names of its own) when `on`.
    pub fn flag(self, name: &'static str, on: bool) -> Self {
        self.section(name, on.then(Context::new))
    }
}

#[derive(Debug)]
enum Node<'t> {
    Text(&'t str),
    Variable(&'t str),
    Section {
        name: &'t str,
        inverted: bool,
        body: Vec<Node<'t>>,
    },
}

/// Renders `template` with `context`; `Err` names the first bad tag.
pub fn render(template: &str, context: &Context) -> Result<String, String> {
    let mut tokens = tokenize(template)?.into_iter();
    let nodes = parse(&mut tokens, None)?;
    let mut out = String::new();
    write(&nodes, &mut vec![context], &mut out)?;
    Ok(out)
}

#[derive(Debug)]
enum Token<'t> {
    Text(&'t str),
    /// The tag's sigil (`#`, `^`, `/` or none) and name.
    Tag(Option<char>, &'t str),
}

fn tokenize(template: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let mut rest = template;
    // Whether the output so far ends a line (a removed standalone tag line counts).
    let mut at_line_start = true;
    while let Some(open) = rest.find("{{") {
        let close = rest[open..]
            .find("}}")
            .map(|c| open + c)
            .ok_or_else(|| format!("a tag opened at `{}` is never closed", excerpt(&rest[open..])))?;
        let inner = rest[open + 2..close].trim();
        let (sigil, name) = match inner.chars().next() {
            Some(c @ ('#' | '^' | '/')) => (Some(c), inner[1..].trim()),
            _ => (None, inner),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "bad tag `{{{{{inner}}}}}`: a name is letters, digits and _"
            ));
        }
        let mut text = &rest[..open];
        let mut after = close + 2;
        let line_start = text.rfind('\n').map(|i| i + 1);
        let starts_line = line_start.is_some() || at_line_start;
        let before_on_line = &text[line_start.unwrap_or(0)..];
        let after_on_line = rest[after..].split('\n').next().unwrap_or("");
        // A section tag alone on its line takes the line with it.
        let standalone = sigil.is_some()
            && starts_line
            && before_on_line.trim().is_empty()
            && after_on_line.trim().is_empty()
            && rest[after..].contains('\n');
        if standalone {
            text = &text[..line_start.unwrap_or(0)];
            after += after_on_line.len() + 1;
        }
        if !text.is_empty() {
            tokens.push(Token::Text(text));
        }
        tokens.push(Token::Tag(sigil, name));
        // After a kept tag the line has content; after a removed one a new line starts.
        at_line_start = standalone;
        rest = &rest[after..];
    }
    if !rest.is_empty() {
        tokens.push(Token::Text(rest));
    }
    Ok(tokens)
}

fn excerpt(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse<'t>(
    tokens: &mut std::vec::IntoIter<Token<'t>>,
    open: Option<&'t str>,
) -> Result<Vec<Node<'t>>, String> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.next() {
        match token {
            Token::Text(t) => nodes.push(Node::Text(t)),
            Token::Tag(None, name) => nodes.push(Node::Variable(name)),
            Token::Tag(Some('/'), name) => {
                return match open {
                    Some(o) if o == name => Ok(nodes),
                    Some(o) => Err(format!("`{{{{/{name}}}}}` closes `{o}`, which is still open")),
                    None => Err(format!("`{{{{/{name}}}}}` closes a section never opened")),
                };
            }
            Token::Tag(Some(sigil), name) => {
                let body = parse(tokens, Some(name))?;
                nodes.push(Node::Section {
                    name,
                    inverted: sigil == '^',
                    body,
                });
            }
        }
    }
    match open {
        Some(name) => Err(format!("section `{name}` is never closed")),
        None => Ok(nodes),
    }
}

fn lookup<'c>(scopes: &[&'c Context], name: &str) -> Result<&'c Value, String> {
    scopes
        .iter()
        .rev()
        .find_map(|c| c.values.get(name))
        .ok_or_else(|| format!("the write-up template uses `{name}`, which has no value"))
}

fn write(nodes: &[Node], scopes: &mut Vec<&Context>, out: &mut String) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Variable(name) => match lookup(scopes, name)? {
                Value::Text(t) => out.push_str(t),
                Value::List(_) => return Err(format!("`{name}` is a list; use {{{{#{name}}}}}")),
            },
            Node::Section { name, inverted, body } => {
                let Value::List(items) = lookup(scopes, name)? else {
                    return Err(format!("`{name}` is a text, not a section"));
                };
                if *inverted {
                    if items.is_empty() {
                        write(body, scopes, out)?;
                    }
                    continue;
                }
                for item in items {
                    scopes.push(item);
                    write(body, scopes, out)?;
                    scopes.pop();
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sections_and_standalone_lines() {
        let c = Context::new()
            .text("who", "beta")
            .list(
                "rows",
                vec![Context::new().text("x", 1), Context::new().text("x", 2)],
            )
            .flag("shown", true)
            .flag("hidden", false);
        let t = "a {{who}}\n{{#rows}}\n- {{x}} of {{who}}\n{{/rows}}\n{{#shown}}yes{{/shown}}{{#hidden}}no{{/hidden}}\n{{^hidden}}\nelse\n{{/hidden}}\nend";
        // Standalone section lines vanish; inline ones leave the text around them.
        assert_eq!(
            render(t, &c).unwrap(),
            "a beta\n- 1 of beta\n- 2 of beta\nyes\nelse\nend"
        );
    }

    #[test]
    fn bad_templates_are_errors_naming_the_tag() {
        let c = Context::new().text("a", 1).flag("s", true);
        for (t, needle) in [
            ("{{b}}", "`b`"),
            ("{{#s}}x", "`s` is never closed"),
            ("{{/s}}", "never opened"),
            ("{{#a}}x{{/a}}", "`a` is a text"),
            ("{{s}}", "`s` is a list"),
            ("{{a", "never closed"),
            ("{{a b}}", "bad tag"),
        ] {
            let err = render(t, &c).unwrap_err();
            assert!(err.contains(needle), "{t}: {err}");
        }
    }
}
