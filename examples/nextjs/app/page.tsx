import { redirect } from "next/navigation";
import { currentSession } from "@/lib/session";
import { Generator } from "./generator";

export default async function GeneratePage({ searchParams }: { searchParams: Promise<{ job?: string }> }) {
  if ((await currentSession()) === null) redirect("/signin");
  const { job } = await searchParams;
  return <Generator initialJobId={job ?? null} />;
}
