import { redirect } from "next/navigation";
import { currentSession } from "@/lib/session";
import { HeatmapUpload } from "./heatmap-upload";

export default async function HeatmapPage() {
  if ((await currentSession()) === null) redirect("/signin");
  return <HeatmapUpload />;
}
