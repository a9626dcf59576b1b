//! Who does what in one share (the rules are in `mod.rs`'s doc): which node each connection
//! goes to, which rooms it joins, which roles send where; and the room keys verification
//! uses, read back from room names on the wire without allocating.

use super::Scenario;
use crate::schedule::parse_u64;

/// Key of a room for verification: a room index, or the two user indexes of a DM room.
pub type Key = u64;
const DM_BIT: u64 = 1 << 63;

pub fn dm_key(a: u32, b: u32) -> Key {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    DM_BIT | (a as u64) << 32 | b as u64
}

pub fn is_dm_key(k: Key) -> bool {
    k & DM_BIT != 0
}

/// The two users of a DM key.
pub fn dm_users(k: Key) -> (u32, u32) {
    (((k & !DM_BIT) >> 32) as u32, k as u32)
}

/// One sending role: a connection sending to one room (and DMs to one peer).
#[derive(Clone, Debug)]
pub struct Role {
    pub conn: u32,
    pub room: u32,
    pub dm_peer: Option<u32>,
    /// This role's slot among the share's senders (spreads their phases).
    pub slot: usize,
}

/// Who does what in one share.
#[derive(Debug)]
pub struct Layout {
    /// Prefix of every user and room name of this share: `<run id>-a<agent>-`.
    pub prefix: String,
    pub rooms: u32,
    pub members: u32,
    pub conns: u32,
    pub roles: Vec<Role>,
    /// Per connection: the rooms it joins.
    pub conn_rooms: Vec<Vec<u32>>,
    /// Per connection: its roles.
    pub conn_roles: Vec<Vec<u32>>,
    /// Per connection: index into the scenario's URLs.
    pub conn_url: Vec<u32>,
}

impl Layout {
    pub fn new(s: &Scenario, run_id: &str, agent: usize) -> Layout {
        let (rooms, members) = (s.rooms as u32, s.members as u32);
        let conns = s.connection_count() as u32;
        let nodes = s.urls.len() as u32;
        let senders = s.senders as u32;
        let senders_in = |r: u32| senders / rooms + u32::from(r < senders % rooms);
        let slot_conn =
            |r: u32, m: u32| ((r as u64 * members as u64 + m as u64) % conns as u64) as u32;

        let mut conn_rooms = vec![Vec::new(); conns as usize];
        for r in 0..rooms {
            for m in 0..members {
                conn_rooms[slot_conn(r, m) as usize].push(r);
            }
        }
        let slots = rooms as u64 * members as u64;
        let conn_url = (0..conns)
            .map(|c| {
                if (c as u64) >= slots || nodes == 1 {
                    return c % nodes;
                }
                let (r, m) = (c / members, c % members);
                let s_r = senders_in(r);
                if m < s_r {
                    r % nodes
                } else {
                    (r + 1 + (m - s_r) % (nodes - 1)) % nodes
                }
            })
            .collect();
        let mut conn_roles = vec![Vec::new(); conns as usize];
        let roles = (0..senders)
            .map(|k| {
                let (r, m) = (k % rooms, k / rooms);
                let conn = slot_conn(r, m);
                let mut peer = slot_conn((r + 1) % rooms, members - 1);
                if peer == conn {
                    peer = slot_conn(r, (m + 1) % members);
                }
                conn_roles[conn as usize].push(k);
                Role {
                    conn,
                    room: r,
                    dm_peer: (peer != conn).then_some(peer),
                    slot: k as usize,
                }
            })
            .collect();
        Layout {
            prefix: format!("{run_id}-a{agent}-"),
            rooms,
            members,
            conns,
            roles,
            conn_rooms,
            conn_roles,
            conn_url,
        }
    }

    /// Connection of member slot `m` of room `r`.
    pub fn member(&self, r: u32, m: u32) -> u32 {
        ((r as u64 * self.members as u64 + m as u64) % self.conns as u64) as u32
    }

    pub fn user(&self, c: u32) -> String {
        format!("{}u{c}", self.prefix)
    }

    pub fn room(&self, r: u32) -> String {
        format!("{}r{r}", self.prefix)
    }

    /// The wire name of a room key: `<prefix>r<r>`, or `dm:<a>:<b>` with the two user names
    /// in byte order (as the server names DM rooms).
    pub fn room_of_key(&self, key: Key) -> String {
        if !is_dm_key(key) {
            return self.room(key as u32);
        }
        let (a, b) = dm_users(key);
        let (a, b) = (self.user(a), self.user(b));
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        format!("dm:{a}:{b}")
    }

    /// The DM rooms connection `c` takes part in (as a sender's peer or as a sender).
    pub fn dm_keys_of(&self, c: u32) -> Vec<Key> {
        let mut keys: Vec<Key> = self
            .roles
            .iter()
            .filter_map(|r| {
                let p = r.dm_peer?;
                (r.conn == c || p == c).then(|| dm_key(r.conn, p))
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Receptions one message to `key` calls for.
    pub fn receivers(&self, key: Key) -> u64 {
        if is_dm_key(key) {
            2
        } else {
            self.members as u64
        }
    }

    fn user_index(&self, name: &[u8]) -> Option<u32> {
        let rest = name
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b"u")?;
        let c = parse_u64(rest)?;
        (c < self.conns as u64).then_some(c as u32)
    }

    /// The verification key of a room name from the wire (no allocation).
    pub fn key_of_room(&self, name: &[u8]) -> Option<Key> {
        if let Some(users) = name.strip_prefix(b"dm:") {
            let colon = users.iter().position(|&b| b == b':')?;
            let a = self.user_index(&users[..colon])?;
            let b = self.user_index(&users[colon + 1..])?;
            return Some(dm_key(a, b));
        }
        let rest = name
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b"r")?;
        let r = parse_u64(rest)?;
        (r < self.rooms as u64).then_some(r)
    }
}
