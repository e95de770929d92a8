"""Break-glass reviews, and the consent/break-glass/share-link event values.

The AlterField only changes choices: no SQL, so SQLite does not rebuild audit_auditevent and its
append-only trigger (0005) survives.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0005_append_only'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='auditevent',
            name='event',
            field=models.CharField(choices=[('query', 'Query'), ('instances_accessed', 'DICOM instances accessed'), ('instances_transferred', 'DICOM instances transferred'), ('instances_stored', 'DICOM instances stored (STOW/C-STORE)'), ('import', 'Import'), ('export', 'Export'), ('user_authentication', 'User authentication'), ('patient_record', 'Patient record'), ('security_alert', 'Security alert'), ('access_denied', 'Access denied'), ('admin_change', 'Administrative change'), ('break_glass', 'Break-glass (emergency) access'), ('consent_change', 'Consent change'), ('share_link_use', 'Share link use')], max_length=32),
        ),
        migrations.CreateModel(
            name='BreakGlassReview',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('status', models.CharField(choices=[('acknowledged', 'Acknowledged'), ('flagged', 'Flagged')], max_length=16)),
                ('comment', models.TextField(blank=True)),
                ('reviewed_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('event', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='review', to='audit.auditevent')),
                ('reviewer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['-reviewed_at', '-id'],
            },
        ),
    ]
