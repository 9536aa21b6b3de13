export async function runBench(_args: string[]): Promise<number> { return 0; }
