//! glibc's `getopt_long`, the way pasta drives it.
//!
//! pasta's callers parse its error output (podman retries without
//! `--map-guest-addr` when it reads `unrecognized option '--map-guest-addr`),
//! so the option syntax and the error texts follow glibc: a `+` optstring
//! (parsing stops at the first non-option), long options as `--opt val` or
//! `--opt=val` and by any unambiguous prefix, short options bundled (`-46`)
//! or with their argument attached (`-t8080`) or separate, `--` ending the
//! options. This module knows no option of its own: the tables come from
//! [`super::cli`]. It never prints; errors carry what glibc would print.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Whether an option takes an argument (glibc's `has_arg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HasArg {
    No,
    Required,
}

/// One entry of the long-option table. Two entries with the same `id` and
/// `has_arg` are aliases: a prefix of both is not ambiguous (glibc compares
/// `has_arg`, `flag` and `val`).
#[derive(Debug, Clone, Copy)]
pub struct LongOpt<Id> {
    pub name: &'static str,
    pub has_arg: HasArg,
    pub id: Id,
}

/// One short option (a character of the optstring).
#[derive(Debug, Clone, Copy)]
pub struct ShortOpt<Id> {
    pub name: u8,
    pub has_arg: HasArg,
    pub id: Id,
}

/// A syntax error, with what glibc names in its message (the text after
/// `argv[0]: `). `spelled` is the option as typed after `--`, with any
/// `=value`, as glibc prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetoptError {
    Unrecognized {
        spelled: String,
    },
    InvalidShort {
        name: char,
    },
    LongRequiresArg {
        name: &'static str,
    },
    ShortRequiresArg {
        name: char,
    },
    LongTakesNoArg {
        name: &'static str,
    },
    Ambiguous {
        spelled: String,
        candidates: Vec<&'static str>,
    },
}

/// One option found on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a, Id> {
    pub id: Id,
    pub arg: Option<&'a OsStr>,
    /// How it was named: the long name in full (even when abbreviated),
    /// or the short one.
    pub name: Spelled,
}

/// An option's name as the command line gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelled {
    Long(&'static str),
    Short(u8),
}

impl std::fmt::Display for Spelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Long(name) => write!(f, "--{name}"),
            Self::Short(name) => write!(f, "-{}", char::from(*name)),
        }
    }
}

/// The scanner: call [`Getopt::next_opt`] until it returns `Ok(None)`, then
/// [`Getopt::operands`] holds the arguments after the options.
pub struct Getopt<'a, Id> {
    args: &'a [OsString],
    longs: &'a [LongOpt<Id>],
    shorts: &'a [ShortOpt<Id>],
    /// Index of the next argument to look at (glibc's `optind`).
    optind: usize,
    /// Inside a bundle of short options: the byte offset of the next one
    /// in `args[optind]`.
    in_bundle: Option<usize>,
}

impl<'a, Id: Copy + PartialEq> Getopt<'a, Id> {
    /// `args` excludes argv[0].
    pub fn new(args: &'a [OsString], longs: &'a [LongOpt<Id>], shorts: &'a [ShortOpt<Id>]) -> Self {
        Self {
            args,
            longs,
            shorts,
            optind: 0,
            in_bundle: None,
        }
    }

    /// The arguments after the last option (and after `--`, if given).
    pub fn operands(&self) -> &'a [OsString] {
        &self.args[self.optind.min(self.args.len())..]
    }

    /// The next option, `Ok(None)` at the first non-option, at `--` or at
    /// the end.
    pub fn next_opt(&mut self) -> Result<Option<Found<'a, Id>>, GetoptError> {
        if let Some(offset) = self.in_bundle {
            return self.short(offset).map(Some);
        }
        let Some(arg) = self.args.get(self.optind) else {
            return Ok(None);
        };
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            self.optind += 1;
            return Ok(None);
        }
        // `+` in the optstring: the first non-option (including a lone `-`)
        // ends the options, nothing is permuted.
        if bytes.len() < 2 || bytes[0] != b'-' {
            return Ok(None);
        }
        if bytes[1] == b'-' {
            return self.long(&bytes[2..]).map(Some);
        }
        self.short(1).map(Some)
    }

    fn long(&mut self, text: &'a [u8]) -> Result<Found<'a, Id>, GetoptError> {
        let spelled = || String::from_utf8_lossy(text).into_owned();
        let name_end = text.iter().position(|&b| b == b'=').unwrap_or(text.len());
        let name = &text[..name_end];
        self.optind += 1;

        let found = match self.longs.iter().find(|o| o.name.as_bytes() == name) {
            Some(exact) => exact,
            None => {
                let mut matches = self
                    .longs
                    .iter()
                    .filter(|o| o.name.as_bytes().starts_with(name));
                let Some(first) = matches.next() else {
                    return Err(GetoptError::Unrecognized { spelled: spelled() });
                };
                // glibc lists the first match and each later one that is no
                // alias of it, in table order.
                let others: Vec<&'static str> = matches
                    .filter(|o| o.id != first.id || o.has_arg != first.has_arg)
                    .map(|o| o.name)
                    .collect();
                if !others.is_empty() {
                    let mut candidates = vec![first.name];
                    candidates.extend(others);
                    return Err(GetoptError::Ambiguous {
                        spelled: spelled(),
                        candidates,
                    });
                }
                first
            }
        };

        let name = Spelled::Long(found.name);
        match (found.has_arg, name_end < text.len()) {
            (HasArg::No, false) => Ok(Found {
                id: found.id,
                arg: None,
                name,
            }),
            (HasArg::No, true) => Err(GetoptError::LongTakesNoArg { name: found.name }),
            (HasArg::Required, true) => Ok(Found {
                id: found.id,
                arg: Some(OsStr::from_bytes(&text[name_end + 1..])),
                name,
            }),
            (HasArg::Required, false) => {
                let Some(value) = self.args.get(self.optind) else {
                    return Err(GetoptError::LongRequiresArg { name: found.name });
                };
                self.optind += 1;
                Ok(Found {
                    id: found.id,
                    arg: Some(value.as_os_str()),
                    name,
                })
            }
        }
    }

    /// The short option at `offset` in `args[optind]`.
    fn short(&mut self, offset: usize) -> Result<Found<'a, Id>, GetoptError> {
        let bytes = self.args[self.optind].as_bytes();
        let name = bytes[offset];
        let rest = offset + 1;
        let last_in_word = rest >= bytes.len();
        // Leave the bundle whatever happens below, as glibc does.
        self.in_bundle = (!last_in_word).then_some(rest);
        if last_in_word {
            self.optind += 1;
        }

        let Some(opt) = self.shorts.iter().find(|o| o.name == name) else {
            return Err(GetoptError::InvalidShort {
                name: char::from(name),
            });
        };
        let spelled = Spelled::Short(name);
        match opt.has_arg {
            HasArg::No => Ok(Found {
                id: opt.id,
                arg: None,
                name: spelled,
            }),
            HasArg::Required if !last_in_word => {
                // The rest of the word is the argument: `-t8080`.
                self.in_bundle = None;
                self.optind += 1;
                Ok(Found {
                    id: opt.id,
                    arg: Some(OsStr::from_bytes(&bytes[rest..])),
                    name: spelled,
                })
            }
            HasArg::Required => {
                let Some(value) = self.args.get(self.optind) else {
                    return Err(GetoptError::ShortRequiresArg {
                        name: char::from(name),
                    });
                };
                self.optind += 1;
                Ok(Found {
                    id: opt.id,
                    arg: Some(value.as_os_str()),
                    name: spelled,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum T {
        Debug,
        NoDhcp,
        NoDhcpv6,
        NoDhcpDns,
        Socket,
        Tcp,
        Four,
        Six,
    }

    const LONGS: &[LongOpt<T>] = &[
        LongOpt {
            name: "debug",
            has_arg: HasArg::No,
            id: T::Debug,
        },
        LongOpt {
            name: "socket",
            has_arg: HasArg::Required,
            id: T::Socket,
        },
        LongOpt {
            name: "no-dhcp",
            has_arg: HasArg::No,
            id: T::NoDhcp,
        },
        LongOpt {
            name: "no-dhcpv6",
            has_arg: HasArg::No,
            id: T::NoDhcpv6,
        },
        LongOpt {
            name: "tcp-ports",
            has_arg: HasArg::Required,
            id: T::Tcp,
        },
        LongOpt {
            name: "no-dhcp-dns",
            has_arg: HasArg::No,
            id: T::NoDhcpDns,
        },
        LongOpt {
            name: "socket-path",
            has_arg: HasArg::Required,
            id: T::Socket,
        },
    ];
    const SHORTS: &[ShortOpt<T>] = &[
        ShortOpt {
            name: b'd',
            has_arg: HasArg::No,
            id: T::Debug,
        },
        ShortOpt {
            name: b't',
            has_arg: HasArg::Required,
            id: T::Tcp,
        },
        ShortOpt {
            name: b'4',
            has_arg: HasArg::No,
            id: T::Four,
        },
        ShortOpt {
            name: b'6',
            has_arg: HasArg::No,
            id: T::Six,
        },
    ];

    /// Every option as (id, arg), then the operands.
    type Scan = (Vec<(T, Option<String>)>, Vec<String>);

    fn scan(args: &[&str]) -> Result<Scan, GetoptError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let mut getopt = Getopt::new(&args, LONGS, SHORTS);
        let mut found = Vec::new();
        while let Some(f) = getopt.next_opt()? {
            found.push((f.id, f.arg.map(|a| a.to_string_lossy().into_owned())));
        }
        let operands = getopt
            .operands()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Ok((found, operands))
    }

    fn opt(id: T, arg: Option<&str>) -> (T, Option<String>) {
        (id, arg.map(String::from))
    }

    #[test]
    fn long_options_take_separate_or_attached_values() {
        let (found, rest) = scan(&["--tcp-ports", "80", "--tcp-ports=81", "--tcp-ports="]).unwrap();
        assert_eq!(
            found,
            [
                opt(T::Tcp, Some("80")),
                opt(T::Tcp, Some("81")),
                opt(T::Tcp, Some(""))
            ]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn a_separate_value_may_look_like_an_option() {
        let (found, _) = scan(&["--tcp-ports", "--debug", "-t", "-d"]).unwrap();
        assert_eq!(
            found,
            [opt(T::Tcp, Some("--debug")), opt(T::Tcp, Some("-d"))]
        );
    }

    #[test]
    fn unambiguous_prefixes_and_exact_names_match() {
        let (found, _) = scan(&["--deb", "--tcp=1", "--no-dhcp", "--no-dhcpv"]).unwrap();
        assert_eq!(
            found,
            [
                opt(T::Debug, None),
                opt(T::Tcp, Some("1")),
                opt(T::NoDhcp, None),
                opt(T::NoDhcpv6, None)
            ]
        );
    }

    #[test]
    fn a_prefix_of_two_aliases_is_not_ambiguous() {
        let (found, _) = scan(&["--sock", "/tmp/s"]).unwrap();
        assert_eq!(found, [opt(T::Socket, Some("/tmp/s"))]);
    }

    #[test]
    fn ambiguous_prefix_lists_distinct_candidates_in_table_order() {
        assert_eq!(
            scan(&["--no-d=1"]).unwrap_err(),
            GetoptError::Ambiguous {
                spelled: "no-d=1".into(),
                candidates: vec!["no-dhcp", "no-dhcpv6", "no-dhcp-dns"],
            }
        );
    }

    #[test]
    fn short_options_bundle_and_take_attached_or_separate_values() {
        let (found, rest) = scan(&["-46", "-dt8080", "-t", "9090", "-d"]).unwrap();
        assert_eq!(
            found,
            [
                opt(T::Four, None),
                opt(T::Six, None),
                opt(T::Debug, None),
                opt(T::Tcp, Some("8080")),
                opt(T::Tcp, Some("9090")),
                opt(T::Debug, None),
            ]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn options_stop_at_the_first_operand_or_double_dash() {
        let (found, rest) = scan(&["-d", "sh", "-d"]).unwrap();
        assert_eq!(found, [opt(T::Debug, None)]);
        assert_eq!(rest, ["sh", "-d"]);
        let (found, rest) = scan(&["--", "-d"]).unwrap();
        assert!(found.is_empty());
        assert_eq!(rest, ["-d"]);
        let (_, rest) = scan(&["-", "x"]).unwrap();
        assert_eq!(rest, ["-", "x"]);
    }

    #[test]
    fn syntax_errors_name_the_option_as_glibc_does() {
        assert_eq!(
            scan(&["--map-guest-addr=1.2.3.4"]).unwrap_err(),
            GetoptError::Unrecognized {
                spelled: "map-guest-addr=1.2.3.4".into()
            }
        );
        assert_eq!(
            scan(&["-dx"]).unwrap_err(),
            GetoptError::InvalidShort { name: 'x' }
        );
        assert_eq!(
            scan(&["--tcp"]).unwrap_err(),
            GetoptError::LongRequiresArg { name: "tcp-ports" }
        );
        assert_eq!(
            scan(&["-t"]).unwrap_err(),
            GetoptError::ShortRequiresArg { name: 't' }
        );
        assert_eq!(
            scan(&["--deb=1"]).unwrap_err(),
            GetoptError::LongTakesNoArg { name: "debug" }
        );
    }
}
