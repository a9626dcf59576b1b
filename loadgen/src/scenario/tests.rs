//! The scenario tests: the layout's node placement and names, the split over agents, TOML and
//! flags.

use super::*;

fn scenario(urls: usize, rooms: usize, members: usize, senders: usize) -> Scenario {
    Scenario {
        urls: (0..urls)
            .map(|i| format!("ws://127.0.0.1:{}", 8081 + i))
            .collect(),
        rooms,
        members,
        senders,
        ..Scenario::default()
    }
}

#[test]
fn senders_and_receivers_sit_on_different_nodes() {
    let s = scenario(2, 4, 5, 4);
    let l = Layout::new(&s, "t", 0);
    assert_eq!(l.conns, 20);
    for role in &l.roles {
        let sender_node = l.conn_url[role.conn as usize];
        for m in 0..l.members {
            let c = l.member(role.room, m);
            if c != role.conn {
                assert_ne!(l.conn_url[c as usize], sender_node);
            }
        }
    }
    // Both nodes get half of the connections.
    let on0 = l.conn_url.iter().filter(|&&u| u == 0).count();
    assert_eq!(on0, 10);
    // Every connection is in exactly one room.
    assert!(l.conn_rooms.iter().all(|r| r.len() == 1));
}

#[test]
fn names_map_back_to_keys() {
    let l = Layout::new(&scenario(1, 3, 4, 3), "lgabc", 1);
    assert_eq!(l.key_of_room(l.room(2).as_bytes()), Some(2));
    assert_eq!(l.key_of_room(b"lgabc-a1-r3"), None);
    assert_eq!(l.key_of_room(b"lgabc-a0-r1"), None);
    let dm = format!("dm:{}:{}", l.user(1), l.user(10));
    assert_eq!(l.key_of_room(dm.as_bytes()), Some(dm_key(10, 1)));
    assert_eq!(dm_users(dm_key(10, 1)), (1, 10));
    assert!(l.roles.iter().all(|r| r.dm_peer.is_some()));
    for r in 0..3 {
        chat_wire::protocol::validate_room(&l.room(r)).unwrap();
    }
    chat_wire::protocol::validate_user(&l.user(11)).unwrap();
}

#[test]
fn split_adds_up() {
    let s = Scenario {
        rate: 1000.0,
        connections: 0,
        ..scenario(2, 10, 10, 10)
    };
    let parts = s.split(3).unwrap();
    assert_eq!(parts.iter().map(|p| p.rooms).sum::<usize>(), 10);
    assert_eq!(parts.iter().map(|p| p.senders).sum::<usize>(), 10);
    assert_eq!(
        parts.iter().map(|p| p.connection_count()).sum::<usize>(),
        100
    );
    let rate: f64 = parts.iter().map(|p| p.rate).sum();
    assert!((rate - 1000.0).abs() < 1e-9);
    for p in &parts {
        assert!((p.rate / p.senders as f64 - 100.0).abs() < 1e-9);
    }
    assert!(s.split(11).is_err());
}

#[test]
fn toml_and_flags() {
    let dir = std::env::temp_dir().join(format!("loadgen-scn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("s.toml");
    std::fs::write(
        &f,
        "rooms = 3\nmembers = 4\nsenders = 3\nrate = 50.0\nurls = [\"ws://127.0.0.1:9\"]\n",
    )
    .unwrap();
    let args = ScenarioArgs {
        scenario: Some(f),
        rate: Some(75.0),
        ..Default::default()
    };
    let s = args.resolve().unwrap();
    assert_eq!((s.rooms, s.members, s.rate), (3, 4, 75.0));
    let back: Scenario = toml::from_str(&s.to_toml()).unwrap();
    assert_eq!(back, s);
    std::fs::remove_dir_all(&dir).ok();
}
