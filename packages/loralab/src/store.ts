// `loralab/store`: the run store whole — openStore, the Store class, its row types, the
// drizzle schemas and the lease (packages/db).
export * from "@loralab/db";
