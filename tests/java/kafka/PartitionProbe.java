import java.util.Properties;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/** Produces each key read from stdin with the Java client's default partitioner and prints
 *  "key<TAB>partition" as reported by the broker. Args: bootstrap topic. */
public class PartitionProbe {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("key.serializer", StringSerializer.class.getName());
        props.put("value.serializer", StringSerializer.class.getName());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props);
             BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String key;
            while ((key = in.readLine()) != null) {
                RecordMetadata meta = producer.send(new ProducerRecord<>(args[1], key, "java")).get();
                System.out.println(key + "\t" + meta.partition());
            }
        }
    }
}
