// The one argument parser of every subcommand: node's parseArgs (so `--out DIR` and `--out=DIR`
// both work), with unknown options refused by name and the nearest valid one suggested.
import { parseArgs } from "node:util";
import { ConfigError, nearestName } from "@loralab/engine";

type Options = NonNullable<Parameters<typeof parseArgs>[0]>["options"] & {};

/** Parse `args` for subcommand `cmd` (usage in errors); `--help`/`-h` is always accepted, and
 *  at most `maxPositionals` arguments that are not options. */
export function cliArgs<O extends Options>(
  cmd: string,
  args: string[],
  options: O,
  usage: string,
  maxPositionals = Infinity,
) {
  const all = { ...options, help: { type: "boolean", short: "h" } } as O & { help: { type: "boolean"; short: "h" } };
  let parsed: ReturnType<
    typeof parseArgs<{ args: string[]; options: typeof all; allowPositionals: true; strict: true }>
  >;
  try {
    parsed = parseArgs({ args, options: all, allowPositionals: true, strict: true });
  } catch (e) {
    const err = e as Error & { code?: string };
    const unknown = /Unknown option '(-{1,2})([^']+)'/.exec(err.message);
    if (unknown) {
      const near = nearestName(unknown[2]!, Object.keys(all));
      throw new ConfigError(
        `${cmd}: unknown option ${unknown[1]}${unknown[2]}${near ? ` (hint: did you mean --${near}?)` : ""}\n${usage}`,
        unknown[2]!,
      );
    }
    const missing = /Option '(?:-\w, )?--([^ ]+) <value>' argument missing/.exec(err.message);
    if (missing) throw new ConfigError(`${cmd}: --${missing[1]} needs a value\n${usage}`, missing[1]!);
    throw new ConfigError(`${cmd}: ${err.message}\n${usage}`, "");
  }
  if (!(parsed.values as { help?: boolean }).help && parsed.positionals.length > maxPositionals)
    throw new ConfigError(
      `${cmd}: unexpected argument ${JSON.stringify(parsed.positionals[maxPositionals])}\n${usage}`,
      "",
    );
  return parsed;
}

/** Split a `train` command line: config overrides (`--section.field=value`, `--field value`:
 *  every option but `flags`) from the rest. */
export function splitOverrides(
  args: string[],
  flags: readonly string[] = ["--quick", "--full", "--help", "-h"],
): { overrides: string[]; rest: string[] } {
  const overrides: string[] = [];
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith("--") || flags.includes(a)) rest.push(a);
    else if (a.includes("=")) overrides.push(a);
    else if (i + 1 < args.length && !args[i + 1]!.startsWith("--")) overrides.push(`${a}=${args[++i]}`);
    else throw new ConfigError(`override ${a}: needs a value (hint: ${a}=VALUE or ${a} VALUE)`, a.slice(2));
  }
  return { overrides, rest };
}
