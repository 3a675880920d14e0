//! A valid component that does not target `airlock:plugin/plugin`.

wit_bindgen::generate!({
    inline: "
        package test:other;
        world other {
            export run: func() -> string;
        }
    ",
});

struct Other;

impl Guest for Other {
    fn run() -> String {
        "not a plugin".to_owned()
    }
}

export!(Other);
