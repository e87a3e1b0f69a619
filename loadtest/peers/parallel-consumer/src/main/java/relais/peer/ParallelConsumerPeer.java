package relais.peer;

import com.sun.net.httpserver.HttpServer;
import io.confluent.parallelconsumer.ParallelConsumerOptions;
import io.confluent.parallelconsumer.ParallelConsumerOptions.CommitMode;
import io.confluent.parallelconsumer.ParallelConsumerOptions.ProcessingOrder;
import io.confluent.parallelconsumer.ParallelStreamProcessor;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * The peer of the slow-upstream run of `make bench`, written the way the Parallel Consumer's
 * documentation shows it: KEY ordering (a key's records one at a time, in offset order; distinct
 * keys in parallel, far beyond the partition count), `maxConcurrency` records in flight, offsets
 * committed asynchronously by the consumer (at-least-once).
 *
 * <p>Each record is POSTed as it is to the upstream with its position as Idempotency-Key; an
 * answer other than 2xx throws, and the Parallel Consumer retries the record.
 *
 * <p>Progress is served as "records 0" on {@code GET /count}, like the Camel peer, so the bench
 * measures both the same way.
 */
public final class ParallelConsumerPeer {
  private static final AtomicLong RECORDS = new AtomicLong();

  private ParallelConsumerPeer() {}

  static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  public static void main(String[] args) throws Exception {
    serveCount(Integer.parseInt(env("PC_PEER_COUNT_PORT", "19111")));
    Properties properties = new Properties();
    properties.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, env("PC_PEER_BOOTSTRAP", "127.0.0.1:9092"));
    properties.put(ConsumerConfig.GROUP_ID_CONFIG, env("PC_PEER_GROUP", "pc-peer"));
    properties.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    properties.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    properties.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    properties.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(properties);

    int concurrency = Integer.parseInt(env("PC_PEER_CONCURRENCY", "1000"));
    ParallelConsumerOptions<byte[], byte[]> options =
        ParallelConsumerOptions.<byte[], byte[]>builder()
            .ordering(ProcessingOrder.KEY)
            .maxConcurrency(concurrency)
            .commitMode(CommitMode.PERIODIC_CONSUMER_ASYNCHRONOUS)
            .consumer(consumer)
            .build();
    ParallelStreamProcessor<byte[], byte[]> processor =
        ParallelStreamProcessor.createEosStreamProcessor(options);
    processor.subscribe(List.of(env("PC_PEER_TOPIC", "relais.ingress")));

    URI upstream = URI.create(env("PC_PEER_UPSTREAM", "http://127.0.0.1:8090/events"));
    HttpClient client =
        HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(2)).version(HttpClient.Version.HTTP_1_1).build();
    processor.poll(context -> {
      ConsumerRecord<byte[], byte[]> record = context.getSingleConsumerRecord();
      HttpRequest request = HttpRequest.newBuilder(upstream)
          .timeout(Duration.ofSeconds(5))
          .header("Content-Type", "application/json")
          .header("Idempotency-Key", record.topic() + "-" + record.partition() + "-" + record.offset())
          .POST(HttpRequest.BodyPublishers.ofByteArray(record.value()))
          .build();
      try {
        HttpResponse<Void> response = client.send(request, HttpResponse.BodyHandlers.discarding());
        if (response.statusCode() / 100 != 2) {
          throw new IllegalStateException("upstream answered " + response.statusCode());
        }
      } catch (IOException failure) {
        throw new IllegalStateException(failure);
      } catch (InterruptedException interrupted) {
        Thread.currentThread().interrupt();
        throw new IllegalStateException(interrupted);
      }
      RECORDS.incrementAndGet();
    });
    Runtime.getRuntime().addShutdownHook(new Thread(processor::closeDrainFirst));
    Thread.currentThread().join();
  }

  private static void serveCount(int port) throws IOException {
    HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 0);
    server.createContext("/count", exchange -> {
      byte[] body = (RECORDS.get() + " 0").getBytes(StandardCharsets.UTF_8);
      exchange.sendResponseHeaders(200, body.length);
      exchange.getResponseBody().write(body);
      exchange.close();
    });
    server.start();
  }
}
