export async function lineage(_argv: string[]): Promise<number> {
  return 2;
}
